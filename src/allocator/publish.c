/* The publisher behind `fragless top`: one small file per process and device in shared
 * memory holding an fli_pub_record, updated in place through a shared mapping under a
 * seqlock, and removed at close or exit; and the readers and liveness test top uses. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "util/file.h"
#include "util/util.h"

/* The file format is an ABI between processes built at different times: a change of
 * fl_stats or of the header must bump FL_PUB_VERSION (and update these figures). */
_Static_assert(sizeof(fl_stats) == 384, "fl_stats changed: bump FL_PUB_VERSION");
_Static_assert(sizeof(fl_stats) % 8 == 0, "fl_stats is published as 64-bit words");
_Static_assert(offsetof(fli_pub_record, seq) == 120, "fli_pub_record header layout");
_Static_assert(sizeof(fli_pub_record) == 128 + 8 * FL_PUB_WORDS, "fli_pub_record layout");
/* Lock-free atomics are address-free, so they work between processes on one mapping. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free for shared memory");

/* A reader retries a copy that met an update: spinning, then yielding, then sleeping
 * (a writer descheduled mid-update holds the record for a time slice); an update is a
 * copy of 368 bytes, so only a writer stopped for good (killed mid-update, or a file
 * whose owner wrote an odd seq) makes a read wait until its deadline: by default 20 ms. */
#define SNAPSHOT_SPINS 64
#define SNAPSHOT_YIELDS 1000
#define SNAPSHOT_WAIT_NS (20 * 1000 * 1000)

struct fli_publisher {
    fli_pub_record *rec;           /* the shared mapping */
    pid_t pid;                    /* the process that made the file: only it removes it */
    int device, slot;
    int removed;                  /* the file is unlinked already (at exit) */
    fli_publisher *next;           /* open publishers of this process */
    char path[PATH_MAX];
};

/* Every open publisher of the process, for the atexit handler and for slot numbers. */
static pthread_mutex_t pub_lock = PTHREAD_MUTEX_INITIALIZER;
static fli_publisher *pub_open;
static pthread_once_t pub_once = PTHREAD_ONCE_INIT;

/* Frontends never destroy their allocators: their files go at exit. Only files this
 * process made (a forked child inherits the list but not the files). */
static void remove_at_exit(void)
{
    pthread_mutex_lock(&pub_lock);
    pid_t self = getpid();
    for (fli_publisher *p = pub_open; p; p = p->next) {
        if (p->pid == self && !p->removed) {
            unlink(p->path);
            p->removed = 1;
        }
    }
    pthread_mutex_unlock(&pub_lock);
}

static void register_at_exit(void)
{
    if (atexit(remove_at_exit) != 0)
        fprintf(stderr, "fragless: top: cannot register the exit handler; files in %s may outlive "
                "this process (`fragless top` removes them)\n", fli_publish_dir());
}

const char *fli_publish_dir(void)
{
    const char *d = getenv("FRAGLESS_TOP_DIR");
    return d && d[0] ? d : "/dev/shm";
}

/* A numeric field (3 < field, counted as proc(5) does) of /proc/PID/stat; 0 when it
 * cannot be read. */
uint64_t fli_proc_stat_field(uint64_t pid, int field)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%llu/stat", (unsigned long long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* comm (field 2) may hold spaces and parentheses: count from the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    for (int k = 3; k < field; k++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return 0;
    }
    char *end;
    unsigned long long t = strtoull(p + 1, &end, 10);
    return end == p + 1 ? 0 : (uint64_t)t;
}

uint64_t fli_proc_start_time(uint64_t pid)
{
    return fli_proc_stat_field(pid, 22);
}

int fli_publish_stale(uint64_t pid, uint64_t start_time, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    *why = "";
    if (pid == 0 || pid > (uint64_t)INT_MAX) {
        *why = "no such process id";
        return 1;
    }
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
        *why = "the process has exited";
        return 1;
    }
    uint64_t now = fli_proc_start_time(pid);
    if (start_time && now && now != start_time) {
        *why = "the process id now belongs to a process started later";
        return 1;
    }
    /* Alive (EPERM: someone else's), or its start cannot be read: keep it. */
    return 0;
}

static void read_comm(char *out, size_t n)
{
    memset(out, 0, n);
    FILE *f = fopen("/proc/self/comm", "r");
    if (f) {
        if (!fgets(out, (int)n, f))
            out[0] = 0;
        fclose(f);
    }
    out[strcspn(out, "\n")] = 0;
    if (!out[0])
        snprintf(out, n, "?");
}

static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The lowest slot no open publisher of this process uses for the device: the first
 * allocator on a device has the plain name, more at once get ".N". Under pub_lock. */
static int free_slot(int device)
{
    for (int slot = 0;; slot++) {
        int used = 0;
        for (fli_publisher *p = pub_open; p && !used; p = p->next)
            used = p->device == device && p->slot == slot;
        if (!used)
            return slot;
    }
}

/* Writes the record into a new hidden file and renames it into place, so a reader never
 * sees a half-written header, and a stale file of an earlier process with our pid is
 * replaced. The folder is writable by every user (/dev/shm): the hidden file has a random
 * name and is created with O_EXCL|O_NOFOLLOW (fli_open_beside), so nothing another user
 * planted there (a symlink to one of our files) is opened, let alone truncated; rename()
 * replaces a link at the final name instead of following it, and in a sticky folder it
 * cannot replace another user's file (EPERM: the error below). Under pub_lock. */
static fl_status create_file(fli_publisher *p, const char *dir, const fli_pub_record *head)
{
    char tmp[PATH_MAX], prefix[96];
    unsigned long long pid = (unsigned long long)p->pid;
    int n = p->slot ? snprintf(p->path, sizeof p->path, "%s/" FL_PUB_PREFIX "%llu.%d.%d", dir, pid, p->device, p->slot)
                    : snprintf(p->path, sizeof p->path, "%s/" FL_PUB_PREFIX "%llu.%d", dir, pid, p->device);
    snprintf(prefix, sizeof prefix, "." FL_PUB_PREFIX "%llu.%d.%d.", pid, p->device, p->slot);
    if (n < 0 || n >= (int)sizeof p->path)
        return fli_fail(FL_ERR_INVALID, "top: FRAGLESS_TOP_DIR '%s' is too long", dir);
    int fd = fli_open_beside(p->path, prefix, 0644, tmp, sizeof tmp);
    if (fd < 0) {
        char why[512];
        snprintf(why, sizeof why, "%s", fl_last_error());
        return fli_fail(FL_ERR_IO, "top: %s (set FRAGLESS_TOP_DIR to a writable directory, or top:0 in "
                       "FRAGLESS_CONF)", why);
    }
    const char *step = "set the size of";
    void *map = MAP_FAILED;
    if (ftruncate(fd, sizeof(fli_pub_record)) == 0) {
        step = "map";
        map = mmap(NULL, sizeof(fli_pub_record), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    int err = errno;
    close(fd);
    if (map != MAP_FAILED) {
        p->rec = map;
        memcpy(p->rec, head, offsetof(fli_pub_record, seq));
        atomic_store_explicit(&p->rec->seq, 0, memory_order_relaxed);
        for (size_t i = 0; i < FL_PUB_WORDS; i++)
            atomic_store_explicit(&p->rec->words[i], 0, memory_order_relaxed);
        atomic_store_explicit(&p->rec->words[0], realtime_ns(), memory_order_relaxed);
        step = "replace";
        if (rename(tmp, p->path) == 0)
            return FL_OK;
        err = errno;
        munmap(map, sizeof(fli_pub_record));
        p->rec = NULL;
    }
    unlink(tmp);
    return fli_fail(FL_ERR_IO, "top: cannot %s %s: %s", step, step[0] == 'r' ? p->path : tmp, strerror(err));
}

/* The process's rank in a distributed job, as torchrun and most launchers set it. */
static int32_t process_rank(void)
{
    static const char *const vars[] = {"RANK", "LOCAL_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        char *end;
        long r = v && *v ? strtol(v, &end, 10) : -1;
        if (v && *v && !*end && r >= 0 && r <= INT32_MAX)
            return (int32_t)r;
    }
    return -1;
}

fl_status fli_publish_open(int device, const char *uuid, fli_publisher **out)
{
    *out = NULL;
    if (device < 0)
        return fli_fail(FL_ERR_INVALID, "top: device %d is not an ordinal", device);
    fli_publisher *p = calloc(1, sizeof *p);
    if (!p)
        return fli_fail(FL_ERR_NOMEM, "top: host memory");
    p->pid = getpid();
    p->device = device;
    fli_pub_record head;
    memset(&head, 0, sizeof head);
    head.magic = FL_PUB_MAGIC;
    head.version = FL_PUB_VERSION;
    head.size = sizeof(fli_pub_record);
    head.device = device;
    head.pid = (uint64_t)p->pid;
    head.start_time = fli_proc_start_time(head.pid);
    read_comm(head.comm, sizeof head.comm);
    head.rank = process_rank();
    snprintf(head.uuid, sizeof head.uuid, "%s", uuid ? uuid : "");

    pthread_once(&pub_once, register_at_exit);
    pthread_mutex_lock(&pub_lock);
    p->slot = free_slot(device);
    fl_status s = create_file(p, fli_publish_dir(), &head);
    if (s == FL_OK) {
        p->next = pub_open;
        pub_open = p;
    }
    pthread_mutex_unlock(&pub_lock);
    if (s != FL_OK) {
        free(p);
        return s;
    }
    *out = p;
    return FL_OK;
}

/* The writer's half of the seqlock (Boehm, "Can seqlocks get along with programming
 * language memory models?", 2012): seq odd, a release fence so no word is seen before
 * the odd seq, the words as relaxed atomics, seq even with release. */
void fli_publish_update(fli_publisher *p, const fl_stats *s)
{
    if (!p)
        return;
    uint64_t w[FL_PUB_WORDS];
    w[0] = realtime_ns();
    memcpy(&w[1], s, sizeof *s);
    fli_pub_record *r = p->rec;
    uint64_t seq = atomic_load_explicit(&r->seq, memory_order_relaxed);
    atomic_store_explicit(&r->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (size_t i = 0; i < FL_PUB_WORDS; i++)
        atomic_store_explicit(&r->words[i], w[i], memory_order_relaxed);
    atomic_store_explicit(&r->seq, seq + 2, memory_order_release);
}

void fli_publish_close(fli_publisher *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&pub_lock);
    for (fli_publisher **q = &pub_open; *q; q = &(*q)->next) {
        if (*q == p) {
            *q = p->next;
            break;
        }
    }
    if (p->pid == getpid() && !p->removed)
        unlink(p->path);
    pthread_mutex_unlock(&pub_lock);
    munmap(p->rec, sizeof(fli_pub_record));
    free(p);
}

/* fork: the list's lock is taken around it, so the child finds the list whole. */
static void pub_prepare(void) { pthread_mutex_lock(&pub_lock); }
static void pub_parent(void) { pthread_mutex_unlock(&pub_lock); }
static void pub_child(void) { pthread_mutex_init(&pub_lock, NULL); }
static pthread_once_t pub_fork_once = PTHREAD_ONCE_INIT;
static void pub_register_fork(void) { pthread_atfork(pub_prepare, pub_parent, pub_child); }

void fli_publish_atfork(void) { pthread_once(&pub_fork_once, pub_register_fork); }

const char *fli_publish_path(const fli_publisher *p)
{
    return p->path;
}

/* ---- readers ------------------------------------------------------------------------
 * Anyone can write the folder (/dev/shm), so a file with a record's name may be anything:
 * a FIFO (open would block), a symlink, a file its owner truncates while we read it (a
 * mapping would then raise SIGBUS), a header that lies. Files are opened without
 * following links or blocking, must be regular files of exactly a record's size, and
 * are read with pread into local copies, never mapped. */

fl_status fli_pub_reader_open(const char *path, fli_pub_reader *r)
{
    memset(r, 0, sizeof *r);
    r->fd = -1;
    struct stat seen, st;
    if (lstat(path, &seen) != 0) {
        int err = errno;
        fl_status s = fli_fail(FL_ERR_IO, "%s: cannot open: %s", path, strerror(err));
        errno = err;
        return s;
    }
    if (!S_ISREG(seen.st_mode)) /* never opened: a FIFO, a device, a link, a folder */
        return fli_fail(FL_ERR_PARSE, "%s: not a regular file", path);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        fl_status s = err == ELOOP ? fli_fail(FL_ERR_PARSE, "%s: not a regular file", path)
                                   : fli_fail(FL_ERR_IO, "%s: cannot open: %s", path, strerror(err));
        errno = err;
        return s;
    }
    fli_pub_record head;
    const size_t head_len = offsetof(fli_pub_record, seq);
    fl_status s = FL_OK;
    ssize_t got;
    if (fstat(fd, &st) != 0) {
        s = fli_fail(FL_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode) || st.st_ino != seen.st_ino || st.st_dev != seen.st_dev) {
        s = fli_fail(FL_ERR_PARSE, "%s: not a regular file", path); /* replaced since lstat */
    } else if ((uint64_t)st.st_size != sizeof(fli_pub_record)) {
        s = fli_fail(FL_ERR_PARSE, "%s: %s: %lld bytes, a record has %zu", path,
                    (uint64_t)st.st_size < sizeof(fli_pub_record) ? "truncated" : "too long", (long long)st.st_size,
                    sizeof(fli_pub_record));
    } else if ((got = pread(fd, &head, head_len, 0)) != (ssize_t)head_len) {
        s = got < 0 ? fli_fail(FL_ERR_IO, "%s: cannot read the header: %s", path, strerror(errno))
                    : fli_fail(FL_ERR_PARSE, "%s: truncated while read", path);
    } else if (head.magic != FL_PUB_MAGIC) {
        s = fli_fail(FL_ERR_PARSE, "%s: not a fragless top record (magic 0x%08x, expected 0x%08x)", path,
                    (unsigned)head.magic, (unsigned)FL_PUB_MAGIC);
    } else if (head.version != FL_PUB_VERSION) {
        s = fli_fail(FL_ERR_PARSE, "%s: record version %u, this fragless reads version %u", path,
                    (unsigned)head.version, (unsigned)FL_PUB_VERSION);
    } else if (head.size != sizeof(fli_pub_record)) {
        s = fli_fail(FL_ERR_PARSE, "%s: record size %u, version %u has %zu", path, (unsigned)head.size,
                    (unsigned)head.version, sizeof(fli_pub_record));
    }
    if (s != FL_OK) {
        close(fd);
        return s;
    }
    r->fd = fd;
    r->uid = st.st_uid;
    r->pid = head.pid;
    r->start_time = head.start_time;
    r->device = head.device;
    r->rank = head.rank;
    memcpy(r->comm, head.comm, sizeof r->comm);
    r->comm[sizeof r->comm - 1] = 0;
    memcpy(r->uuid, head.uuid, sizeof r->uuid);
    r->uuid[sizeof r->uuid - 1] = 0;
    return FL_OK;
}

void fli_pub_reader_close(fli_pub_reader *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
}

/* len bytes at off; 0 when the file was cut short under us. */
static int read_at(int fd, void *buf, size_t len, size_t off)
{
    return pread(fd, buf, len, (off_t)off) == (ssize_t)len;
}

/* The reader's half of the seqlock, through pread: seq, the words, seq again (each pread
 * a separate copy, in that order; the fences keep this thread's side in order too); the
 * copy is whole when both reads of seq are the same even value. */
fli_pub_read fli_pub_reader_snapshot(const fli_pub_reader *r, uint64_t deadline_ns, fli_pub_entry *out)
{
    memset(out, 0, sizeof *out);
    out->pid = r->pid;
    out->start_time = r->start_time;
    out->device = r->device;
    out->rank = r->rank;
    memcpy(out->comm, r->comm, sizeof out->comm);
    if (!deadline_ns)
        deadline_ns = fli_now_ns() + SNAPSHOT_WAIT_NS;
    memcpy(out->uuid, r->uuid, sizeof out->uuid);
    out->uuid[sizeof out->uuid - 1] = 0;
    uint64_t w[FL_PUB_WORDS];
    for (int tries = 0;; tries++) {
        uint64_t s1, s2;
        if (!read_at(r->fd, &s1, sizeof s1, offsetof(fli_pub_record, seq)))
            goto cut;
        if (!(s1 & 1)) {
            atomic_thread_fence(memory_order_acquire);
            if (!read_at(r->fd, w, sizeof w, offsetof(fli_pub_record, words)))
                goto cut;
            atomic_thread_fence(memory_order_acquire);
            if (!read_at(r->fd, &s2, sizeof s2, offsetof(fli_pub_record, seq)))
                goto cut;
            if (s1 == s2) {
                out->seq = s1;
                out->updated_ns = w[0];
                memcpy(&out->stats, &w[1], sizeof out->stats);
                return FL_PUB_WHOLE;
            }
        }
        /* Spinning first (an update is a copy of 368 bytes); waiting, yielding then
         * sleeping, only until the deadline, which a caller reading many files shares
         * among them (a frame of `top` waits that long at most, however many are stuck). */
        if (tries < SNAPSHOT_SPINS)
            continue;
        if (fli_now_ns() >= deadline_ns)
            return FL_PUB_BUSY;
        if (tries < SNAPSHOT_SPINS + SNAPSHOT_YIELDS)
            sched_yield();
        else
            nanosleep(&(struct timespec){0, 20000}, NULL);
    }
cut:
    fli_fail(FL_ERR_PARSE, "the record was cut short while being read");
    return FL_PUB_CUT;
}

fl_status fli_publish_read(const char *path, fli_pub_entry *out)
{
    fli_pub_reader r;
    fl_status s = fli_pub_reader_open(path, &r);
    if (s != FL_OK)
        return s;
    fli_pub_read got = fli_pub_reader_snapshot(&r, 0, out);
    fli_pub_reader_close(&r);
    if (got == FL_PUB_BUSY)
        return fli_fail(FL_ERR_PARSE, "%s: every read met an update in progress", path);
    if (got == FL_PUB_CUT)
        return fli_fail(FL_ERR_PARSE, "%s: truncated while read", path);
    return FL_OK;
}
