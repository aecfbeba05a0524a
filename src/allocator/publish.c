/* The publisher behind `fragless top`: one small file per process and device in shared
 * memory holding an fl_pub_record, updated in place through a shared mapping under a
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

/* The file format is an ABI between processes built at different times: a change of
 * fl_stats or of the header must bump FL_PUB_VERSION (and update these figures). */
_Static_assert(sizeof(fl_stats) == 376, "fl_stats changed: bump FL_PUB_VERSION");
_Static_assert(sizeof(fl_stats) % 8 == 0, "fl_stats is published as 64-bit words");
_Static_assert(offsetof(fl_pub_record, seq) == 64, "fl_pub_record header layout");
_Static_assert(sizeof(fl_pub_record) == 72 + 8 * FL_PUB_WORDS, "fl_pub_record layout");
/* Lock-free atomics are address-free, so they work between processes on one mapping. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free for shared memory");

/* A reader retries a copy that met an update: spinning, then yielding, then sleeping
 * (a writer descheduled mid-update holds the record for a time slice); an update is a
 * copy of 368 bytes, so only a writer stopped for good (killed mid-update) exhausts the
 * tries, after at least 20 ms. */
#define SNAPSHOT_SPINS 64
#define SNAPSHOT_YIELDS 1000
#define SNAPSHOT_SLEEPS 1000 /* of 20 us each */

struct fl_publisher {
    fl_pub_record *rec;           /* the shared mapping */
    pid_t pid;                    /* the process that made the file: only it removes it */
    int device, slot;
    int removed;                  /* the file is unlinked already (at exit) */
    fl_publisher *next;           /* open publishers of this process */
    char path[PATH_MAX];
};

/* Every open publisher of the process, for the atexit handler and for slot numbers. */
static pthread_mutex_t pub_lock = PTHREAD_MUTEX_INITIALIZER;
static fl_publisher *pub_open;
static pthread_once_t pub_once = PTHREAD_ONCE_INIT;

/* Frontends never destroy their allocators: their files go at exit. Only files this
 * process made (a forked child inherits the list but not the files). */
static void remove_at_exit(void)
{
    pthread_mutex_lock(&pub_lock);
    pid_t self = getpid();
    for (fl_publisher *p = pub_open; p; p = p->next) {
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
                "this process (`fragless top` removes them)\n", fl_publish_dir());
}

const char *fl_publish_dir(void)
{
    const char *d = getenv("FRAGLESS_TOP_DIR");
    return d && d[0] ? d : "/dev/shm";
}

uint64_t fl_proc_start_time(uint64_t pid)
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
    for (int field = 3; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return 0;
    }
    char *end;
    unsigned long long t = strtoull(p + 1, &end, 10);
    return end == p + 1 ? 0 : (uint64_t)t;
}

int fl_publish_stale(uint64_t pid, uint64_t start_time, const char **why)
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
    uint64_t now = fl_proc_start_time(pid);
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
        for (fl_publisher *p = pub_open; p && !used; p = p->next)
            used = p->device == device && p->slot == slot;
        if (!used)
            return slot;
    }
}

/* Writes the record into a hidden file and renames it into place, so a reader never
 * sees a half-written header, and a stale file of an earlier process with our pid is
 * replaced. Under pub_lock. */
static fl_status create_file(fl_publisher *p, const char *dir, const fl_pub_record *head)
{
    char tmp[PATH_MAX];
    unsigned long long pid = (unsigned long long)p->pid;
    int n = p->slot ? snprintf(p->path, sizeof p->path, "%s/" FL_PUB_PREFIX "%llu.%d.%d", dir, pid, p->device, p->slot)
                    : snprintf(p->path, sizeof p->path, "%s/" FL_PUB_PREFIX "%llu.%d", dir, pid, p->device);
    int m = snprintf(tmp, sizeof tmp, "%s/." FL_PUB_PREFIX "%llu.%d.%d.tmp", dir, pid, p->device, p->slot);
    if (n < 0 || n >= (int)sizeof p->path || m < 0 || m >= (int)sizeof tmp)
        return fl_fail(FL_ERR_INVALID, "top: FRAGLESS_TOP_DIR '%s' is too long", dir);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return fl_fail(FL_ERR_IO, "top: cannot create %s: %s (set FRAGLESS_TOP_DIR to a writable "
                       "directory, or top:0 in FRAGLESS_CONF)", tmp, strerror(errno));
    const char *step = "set the size of";
    void *map = MAP_FAILED;
    if (ftruncate(fd, sizeof(fl_pub_record)) == 0) {
        step = "map";
        map = mmap(NULL, sizeof(fl_pub_record), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    int err = errno;
    close(fd);
    if (map != MAP_FAILED) {
        p->rec = map;
        memcpy(p->rec, head, offsetof(fl_pub_record, seq));
        atomic_store_explicit(&p->rec->seq, 0, memory_order_relaxed);
        for (size_t i = 0; i < FL_PUB_WORDS; i++)
            atomic_store_explicit(&p->rec->words[i], 0, memory_order_relaxed);
        atomic_store_explicit(&p->rec->words[0], realtime_ns(), memory_order_relaxed);
        step = "rename";
        if (rename(tmp, p->path) == 0)
            return FL_OK;
        err = errno;
        munmap(map, sizeof(fl_pub_record));
        p->rec = NULL;
    }
    unlink(tmp);
    return fl_fail(FL_ERR_IO, "top: cannot %s %s: %s", step, step[0] == 'r' ? p->path : tmp, strerror(err));
}

fl_status fl_publish_open(int device, fl_publisher **out)
{
    *out = NULL;
    if (device < 0)
        return fl_fail(FL_ERR_INVALID, "top: device %d is not an ordinal", device);
    fl_publisher *p = calloc(1, sizeof *p);
    if (!p)
        return fl_fail(FL_ERR_NOMEM, "top: host memory");
    p->pid = getpid();
    p->device = device;
    fl_pub_record head;
    memset(&head, 0, sizeof head);
    head.magic = FL_PUB_MAGIC;
    head.version = FL_PUB_VERSION;
    head.size = sizeof(fl_pub_record);
    head.device = device;
    head.pid = (uint64_t)p->pid;
    head.start_time = fl_proc_start_time(head.pid);
    read_comm(head.comm, sizeof head.comm);

    pthread_once(&pub_once, register_at_exit);
    pthread_mutex_lock(&pub_lock);
    p->slot = free_slot(device);
    fl_status s = create_file(p, fl_publish_dir(), &head);
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
void fl_publish_update(fl_publisher *p, const fl_stats *s)
{
    if (!p)
        return;
    uint64_t w[FL_PUB_WORDS];
    w[0] = realtime_ns();
    memcpy(&w[1], s, sizeof *s);
    fl_pub_record *r = p->rec;
    uint64_t seq = atomic_load_explicit(&r->seq, memory_order_relaxed);
    atomic_store_explicit(&r->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (size_t i = 0; i < FL_PUB_WORDS; i++)
        atomic_store_explicit(&r->words[i], w[i], memory_order_relaxed);
    atomic_store_explicit(&r->seq, seq + 2, memory_order_release);
}

void fl_publish_close(fl_publisher *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&pub_lock);
    for (fl_publisher **q = &pub_open; *q; q = &(*q)->next) {
        if (*q == p) {
            *q = p->next;
            break;
        }
    }
    if (p->pid == getpid() && !p->removed)
        unlink(p->path);
    pthread_mutex_unlock(&pub_lock);
    munmap(p->rec, sizeof(fl_pub_record));
    free(p);
}

const char *fl_publish_path(const fl_publisher *p)
{
    return p->path;
}

/* ---- readers ------------------------------------------------------------------------ */

fl_status fl_publish_map(const char *path, const fl_pub_record **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        fl_status s = fl_fail(FL_ERR_IO, "%s: cannot open: %s", path, strerror(err));
        errno = err;
        return s;
    }
    struct stat st;
    fl_pub_record head;
    fl_status s = FL_OK;
    if (fstat(fd, &st) != 0) {
        s = fl_fail(FL_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        s = fl_fail(FL_ERR_PARSE, "%s: not a regular file", path);
    } else if ((uint64_t)st.st_size < offsetof(fl_pub_record, seq)) {
        s = fl_fail(FL_ERR_PARSE, "%s: truncated: %lld bytes, a record has %zu", path, (long long)st.st_size,
                    sizeof(fl_pub_record));
    } else if (pread(fd, &head, offsetof(fl_pub_record, seq), 0) != (ssize_t)offsetof(fl_pub_record, seq)) {
        s = fl_fail(FL_ERR_IO, "%s: cannot read the header: %s", path, strerror(errno));
    } else if (head.magic != FL_PUB_MAGIC) {
        s = fl_fail(FL_ERR_PARSE, "%s: not a fragless top record (magic 0x%08x, expected 0x%08x)", path,
                    (unsigned)head.magic, (unsigned)FL_PUB_MAGIC);
    } else if (head.version != FL_PUB_VERSION) {
        s = fl_fail(FL_ERR_PARSE, "%s: record version %u, this fragless reads version %u", path,
                    (unsigned)head.version, (unsigned)FL_PUB_VERSION);
    } else if (head.size != sizeof(fl_pub_record)) {
        s = fl_fail(FL_ERR_PARSE, "%s: record size %u, version %u has %zu", path, (unsigned)head.size,
                    (unsigned)head.version, sizeof(fl_pub_record));
    } else if ((uint64_t)st.st_size != sizeof(fl_pub_record)) {
        s = fl_fail(FL_ERR_PARSE, "%s: %s: %lld bytes, the record has %zu", path,
                    (uint64_t)st.st_size < sizeof(fl_pub_record) ? "truncated" : "too long",
                    (long long)st.st_size, sizeof(fl_pub_record));
    }
    if (s == FL_OK) {
        void *map = mmap(NULL, sizeof(fl_pub_record), PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED)
            s = fl_fail(FL_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
        else
            *out = map;
    }
    close(fd);
    return s;
}

/* The reader's half: seq (acquire), the words (relaxed), an acquire fence, seq again;
 * the copy is whole when both reads of seq are the same even value. */
int fl_publish_snapshot(const fl_pub_record *r, fl_pub_entry *out)
{
    memset(out, 0, sizeof *out);
    out->pid = r->pid;
    out->start_time = r->start_time;
    out->device = r->device;
    memcpy(out->comm, r->comm, sizeof out->comm);
    out->comm[sizeof out->comm - 1] = 0;
    /* The mapping is read-only: loads only, through a pointer to non-const atomics
     * because C11's atomic_load takes one (it does not write). */
    fl_pub_record *m = (fl_pub_record *)r;
    uint64_t w[FL_PUB_WORDS];
    for (int tries = 0; tries < SNAPSHOT_SPINS + SNAPSHOT_YIELDS + SNAPSHOT_SLEEPS; tries++) {
        uint64_t s1 = atomic_load_explicit(&m->seq, memory_order_acquire);
        if (!(s1 & 1)) {
            for (size_t i = 0; i < FL_PUB_WORDS; i++)
                w[i] = atomic_load_explicit(&m->words[i], memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&m->seq, memory_order_relaxed) == s1) {
                out->seq = s1;
                out->updated_ns = w[0];
                memcpy(&out->stats, &w[1], sizeof out->stats);
                return 0;
            }
        }
        if (tries >= SNAPSHOT_SPINS + SNAPSHOT_YIELDS)
            nanosleep(&(struct timespec){0, 20000}, NULL);
        else if (tries >= SNAPSHOT_SPINS)
            sched_yield();
    }
    return -1;
}

void fl_publish_unmap(const fl_pub_record *r)
{
    if (r)
        munmap((void *)r, sizeof(fl_pub_record));
}

fl_status fl_publish_read(const char *path, fl_pub_entry *out)
{
    const fl_pub_record *r;
    fl_status s = fl_publish_map(path, &r);
    if (s != FL_OK)
        return s;
    if (fl_publish_snapshot(r, out) != 0)
        s = fl_fail(FL_ERR_PARSE, "%s: every read met an update in progress (seq %llu)", path,
                    (unsigned long long)atomic_load_explicit(&((fl_pub_record *)r)->seq, memory_order_relaxed));
    fl_publish_unmap(r);
    return s;
}
