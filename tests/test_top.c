/* `fragless top` and the publisher behind it: a child process allocating on the cuda
 * device over the driver double is listed with its pid and live bytes; the record read
 * directly is what fl_get_stats says; files go at a normal exit, stay after SIGKILL and
 * are then removed by top, as are records whose pid now names another process; malformed
 * files are skipped with a note; the seqlock never hands out a torn record. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)

static const char fake_path[] = FL_TEST_FAKECUDA;

static char dir[64];

/* ---- helpers ------------------------------------------------------------------------ */

/* Runs a shell command line. */
static fl_run_result *top_once(void)
{
    fl_run_result *r = fl_test_run("FRAGLESS_NVML_LIB=/nonexistent/libnvidia-ml.so.1 '%s' top --once --dir '%s'", FL_CLI, dir);
    if (r->code != 0)
        fprintf(stderr, "top --once: exit %d\nstdout:\n%sstderr:\n%s", r->code, r->out, r->err);
    return r;
}

/* The table line of pid (its first field), or NULL. */
static const char *line_of(const char *text, uint64_t pid, char *buf, size_t n)
{
    for (const char *l = text; *l;) {
        const char *end = strchr(l, '\n');
        size_t len = end ? (size_t)(end - l) : strlen(l);
        unsigned long long first;
        char after;
        if (len < n && sscanf(l, "%llu%c", &first, &after) == 2 && first == pid && after == ' ') {
            memcpy(buf, l, len);
            buf[len] = 0;
            return buf;
        }
        l = end ? end + 1 : l + len;
    }
    return NULL;
}

static void record_path(char *buf, size_t n, uint64_t pid, int device)
{
    snprintf(buf, n, "%s/fragless.%llu.%d", dir, (unsigned long long)pid, device);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static fl_device *cuda_device(void)
{
    fl_cuda_params p;
    fl_cuda_params_default(&p);
    p.library = fake_path;
    fl_device *d = NULL;
    if (fl_cuda_device_create(&p, &d) != FL_OK)
        fprintf(stderr, "cannot create a cuda device on the double: %s\n", fl_last_error());
    return d;
}

/* ---- a child process that allocates and waits ------------------------------------------ */

typedef struct child {
    pid_t pid;
    int ctl;         /* write a byte: the child exits normally */
    fl_stats stats;  /* its fl_get_stats after its last publication */
    int ready;
} child;

/* The child's allocator, never destroyed (as the frontends' are not). */
static fl_allocator *kept_alive;

static int child_main(int up, int down)
{
    setenv("RANK", "5", 1); /* as torchrun sets it */
    fl_device *d = cuda_device();
    fl_config cfg;
    fl_config_default(&cfg);
    fl_allocator *a = NULL;
    if (!d || fl_allocator_create(&cfg, d, &a) != FL_OK)
        return 2;
    uint64_t addr[4];
    const uint64_t size[4] = {3 * MiB, 100 * 1000, 5 * MiB + 12345, 777};
    for (int i = 0; i < 4; i++)
        if (fl_alloc(a, size[i], 0, &addr[i]) != FL_OK)
            return 3;
    if (fl_free(a, addr[1]) != FL_OK || fl_empty_cache(a) != FL_OK) /* empty_cache publishes */
        return 4;
    fl_stats st;
    fl_get_stats(a, &st);
    if (write(up, &st, sizeof st) != (ssize_t)sizeof st)
        return 5;
    char c;
    if (read(down, &c, 1) != 1)
        return 6;
    kept_alive = a; /* reachable: LeakSanitizer does not count it */
    return 0; /* exit() without destroying the allocator, as frontends do */
}

static void start_child(child *c)
{
    int up[2], down[2];
    memset(c, 0, sizeof *c);
    if (pipe(up) || pipe(down)) {
        perror("pipe");
        exit(1);
    }
    fflush(NULL);
    c->pid = fork();
    if (c->pid == 0) {
        close(up[0]);
        close(down[1]);
        exit(child_main(up[1], down[0]));
    }
    close(up[1]);
    close(down[0]);
    c->ctl = down[1];
    c->ready = read(up[0], &c->stats, sizeof c->stats) == (ssize_t)sizeof c->stats;
    close(up[0]);
    CHECK(c->ready);
}

static int finish_child(child *c, int sig)
{
    if (sig)
        kill(c->pid, sig);
    else if (write(c->ctl, "x", 1) != 1)
        perror("write");
    close(c->ctl);
    int st = 0;
    waitpid(c->pid, &st, 0);
    return st;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_child_listed_and_removed(void)
{
    child c;
    start_child(&c);
    if (!c.ready) {
        finish_child(&c, SIGKILL);
        return;
    }
    char path[256];
    record_path(path, sizeof path, (uint64_t)c.pid, 0);
    CHECK(exists(path));

    /* The record read directly is the child's fl_get_stats, field for field. */
    fli_pub_entry e;
    CHECK_OK(fli_publish_read(path, &e));
    CHECK_EQ_U64(e.pid, c.pid);
    CHECK_EQ_U64(e.device, 0);
    CHECK(!strcmp(e.comm, "test_top"));
    CHECK_EQ_U64(e.rank, 5);
    /* The double's UUID of device 0: "fakecuda", then zeros and the ordinal. */
    CHECK(!strcmp(e.uuid, "GPU-66616b65-6375-6461-0000-000000000000"));
    CHECK(e.start_time != 0 && e.start_time == fli_proc_start_time((uint64_t)c.pid));
    CHECK(e.seq >= 2 && e.seq % 2 == 0);
    CHECK_EQ_U64(e.stats.allocated_bytes.current, c.stats.allocated_bytes.current);
    CHECK_EQ_U64(e.stats.reserved_bytes.current, c.stats.reserved_bytes.current);
    CHECK_EQ_U64(e.stats.allocation.current, 3);
    CHECK_EQ_U64(e.stats.requested_bytes.current, 3 * MiB + 5 * MiB + 12345 + 777);
    CHECK(memcmp(&e.stats, &c.stats, sizeof e.stats) == 0);
    CHECK(!fli_publish_stale(e.pid, e.start_time, NULL));

    /* top lists it: pid, device, command, live bytes. */
    fl_run_result *r = top_once();
    CHECK_EQ_U64(r->code, 0);
    fprintf(stderr, "--- fragless top --once --dir %s:\n%s---\n", dir, r->out);
    char line[512], live[32], reserved[32];
    fl_format_size(c.stats.allocated_bytes.current, live, sizeof live);
    fl_format_size(c.stats.reserved_bytes.current, reserved, sizeof reserved);
    const char *l = line_of(r->out, (uint64_t)c.pid, line, sizeof line);
    CHECK(l != NULL);
    if (l) {
        CHECK(strstr(l, " test_top ") != NULL);
        CHECK(strstr(l, live) != NULL);
        CHECK(strstr(l, reserved) != NULL);
        /* PID RANK DEV UUID GPU */
        unsigned long long pid = 0;
        char rank[8], uuid[16], gpu[8];
        int dev = -1;
        CHECK(sscanf(l, "%llu %7s %d %15s %7s", &pid, rank, &dev, uuid, gpu) == 5);
        CHECK(pid == (unsigned long long)c.pid && !strcmp(rank, "5") && dev == 0);
        CHECK(!strcmp(uuid, "GPU-66616b65") && !strcmp(gpu, "-"));
    }
    CHECK(strstr(r->out, "NVML not available: device totals not shown") != NULL);
    CHECK(strstr(r->out, "LIVE") && strstr(r->out, "RESERVED") && strstr(r->out, "EXT FRAG"));
    CHECK(strstr(r->out, "1 allocator ") != NULL);

    /* A normal exit removes the file (atexit: the allocator was never destroyed). */
    int st = finish_child(&c, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(!exists(path));
}

static void test_killed_child_left_then_removed(void)
{
    child c;
    start_child(&c);
    char path[256], tmp[256];
    record_path(path, sizeof path, (uint64_t)c.pid, 0);
    int st = finish_child(&c, SIGKILL);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    CHECK(exists(path)); /* nothing ran at a kill */
    /* A record being created when its process died: hidden, removed without a word. */
    snprintf(tmp, sizeof tmp, "%s/.fragless.%d.0.0.tmp", dir, (int)c.pid);
    FILE *f = fopen(tmp, "w");
    if (f)
        fclose(f);

    fli_pub_entry e;
    CHECK_OK(fli_publish_read(path, &e));
    const char *why = "";
    CHECK(fli_publish_stale(e.pid, e.start_time, &why) == 1);
    CHECK(strstr(why, "exited") != NULL);

    fl_run_result *r = top_once();
    CHECK_EQ_U64(r->code, 0);
    char line[512], want[320];
    CHECK(line_of(r->out, (uint64_t)c.pid, line, sizeof line) == NULL);
    snprintf(want, sizeof want, "removed %s: stale (the process has exited)", path);
    CHECK(strstr(r->out, want) != NULL);
    CHECK(strstr(r->out, "no process is publishing") != NULL);
    CHECK(!exists(path));
    CHECK(!exists(tmp));
    r = top_once();
    CHECK(strstr(r->out, "removed") == NULL);
}

/* A record whose pid is alive (ours) but whose start time is another: the pid was
 * reused. With the right start time the same record is listed. */
static void write_record(const char *path, uint64_t pid, uint64_t start, int device, const char *comm)
{
    fli_pub_record rec;
    memset(&rec, 0, sizeof rec);
    rec.magic = FL_PUB_MAGIC;
    rec.version = FL_PUB_VERSION;
    rec.size = sizeof rec;
    rec.device = device;
    rec.pid = pid;
    rec.start_time = start;
    snprintf(rec.comm, sizeof rec.comm, "%s", comm);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(&rec, sizeof rec, 1, f) == 1);
    if (f)
        fclose(f);
}

static void test_reused_pid(void)
{
    uint64_t me = (uint64_t)getpid(), start = fli_proc_start_time(me);
    CHECK(start != 0);
    char reused[256], live[256], want[512];
    snprintf(reused, sizeof reused, "%s/fragless.%llu.7", dir, (unsigned long long)me);
    snprintf(live, sizeof live, "%s/fragless.%llu.8", dir, (unsigned long long)me);
    write_record(reused, me, start + 1000, 7, "impostor");
    write_record(live, me, start, 8, "honest");
    fl_run_result *r = top_once();
    CHECK_EQ_U64(r->code, 0);
    snprintf(want, sizeof want, "removed %s: stale (the process id now belongs to a process started later)", reused);
    CHECK(strstr(r->out, want) != NULL);
    CHECK(strstr(r->out, "impostor") == NULL);
    CHECK(strstr(r->out, " honest ") != NULL);
    CHECK(!exists(reused));
    CHECK(exists(live));
    unlink(live);
}

static void test_malformed_skipped(void)
{
    char garbage[256], magic[256], version[256], size[256], cut[256], want[800];
    snprintf(garbage, sizeof garbage, "%s/fragless.garbage", dir);
    snprintf(magic, sizeof magic, "%s/fragless.magic", dir);
    snprintf(version, sizeof version, "%s/fragless.version", dir);
    snprintf(size, sizeof size, "%s/fragless.size", dir);
    snprintf(cut, sizeof cut, "%s/fragless.cut", dir);
    FILE *f = fopen(garbage, "w");
    fputs("not a record\n", f);
    fclose(f);
    uint64_t me = (uint64_t)getpid();
    write_record(magic, me, 0, 0, "x");
    write_record(version, me, 0, 0, "x");
    write_record(size, me, 0, 0, "x");
    write_record(cut, me, 0, 0, "x");
    /* Patch the header fields in place. */
    uint32_t bad = 0xdeadbeef, v99 = 99, s12 = 12;
    f = fopen(magic, "r+b");
    fwrite(&bad, 4, 1, f);
    fclose(f);
    f = fopen(version, "r+b");
    fseek(f, 4, SEEK_SET);
    fwrite(&v99, 4, 1, f);
    fclose(f);
    f = fopen(size, "r+b");
    fseek(f, 8, SEEK_SET);
    fwrite(&s12, 4, 1, f);
    fclose(f);
    CHECK(truncate(cut, 100) == 0);

    fli_pub_entry e;
    CHECK_STATUS(fli_publish_read(magic, &e), FL_ERR_PARSE);
    CHECK_MENTIONS(magic);
    CHECK_MENTIONS("0xdeadbeef");
    CHECK_STATUS(fli_publish_read(cut, &e), FL_ERR_PARSE);
    CHECK_MENTIONS("truncated");
    CHECK_STATUS(fli_publish_read(garbage, &e), FL_ERR_PARSE);

    fl_run_result *r = top_once();
    CHECK_EQ_U64(r->code, 0);
    snprintf(want, sizeof want, "skipped %s: truncated: 13 bytes", garbage);
    CHECK(strstr(r->out, want) != NULL);
    snprintf(want, sizeof want, "skipped %s: not a fragless top record (magic 0xdeadbeef", magic);
    CHECK(strstr(r->out, want) != NULL);
    snprintf(want, sizeof want, "skipped %s: record version 99", version);
    CHECK(strstr(r->out, want) != NULL);
    snprintf(want, sizeof want, "skipped %s: record size 12", size);
    CHECK(strstr(r->out, want) != NULL);
    snprintf(want, sizeof want, "skipped %s: truncated: 100 bytes", cut);
    CHECK(strstr(r->out, want) != NULL);
    /* Skipped, not removed: they may be someone else's. */
    CHECK(exists(garbage) && exists(magic) && exists(version) && exists(size) && exists(cut));
    /* Another version's record named for a process that is gone is removed; one named for
     * a live process stays. */
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    CHECK(child > 0 && waitpid(child, NULL, 0) == child);
    char gone[256], alive[256];
    snprintf(gone, sizeof gone, "%s/fragless.%llu.0", dir, (unsigned long long)child);
    snprintf(alive, sizeof alive, "%s/fragless.%llu.7", dir, (unsigned long long)me);
    write_record(gone, (uint64_t)child, 0, 0, "x");
    write_record(alive, me, 7, 0, "x");
    const char *other[2] = {gone, alive};
    for (int i = 0; i < 2; i++) {
        f = fopen(other[i], "r+b");
        fseek(f, 4, SEEK_SET);
        fwrite(&v99, 4, 1, f);
        fclose(f);
    }
    r = top_once();
    CHECK_EQ_U64(r->code, 0);
    snprintf(want, sizeof want, "removed %s: stale (%s: record version 99", gone, gone);
    CHECK(strstr(r->out, want) != NULL);
    CHECK(!exists(gone));
    snprintf(want, sizeof want, "skipped %s: record version 99", alive);
    CHECK(strstr(r->out, want) != NULL);
    CHECK(exists(alive));
    unlink(alive);
    unlink(garbage);
    unlink(magic);
    unlink(version);
    unlink(size);
    unlink(cut);
}

static void test_usage_and_refresh(void)
{
    fl_run_result *r = fl_test_run("'%s' top --interval 0", FL_CLI);
    CHECK(r->code == 1 && strstr(r->err, "--interval '0'"));
    r = fl_test_run("'%s' top --bogus", FL_CLI);
    CHECK(r->code == 1 && strstr(r->err, "unknown option '--bogus'"));
    r = fl_test_run("'%s' top --dir", FL_CLI);
    CHECK(r->code == 1 && strstr(r->err, "needs a value"));
    r = fl_test_run("'%s' top --once --dir /nonexistent/fl_top", FL_CLI);
    CHECK(r->code == 2 && strstr(r->err, "/nonexistent/fl_top"));
    r = fl_test_run("'%s' help top", FL_CLI);
    CHECK(r->code == 0 && strstr(r->out, "--once") && strstr(r->out, "removed"));
    r = fl_test_run("'%s' help", FL_CLI);
    CHECK(r->code == 0 && strstr(r->out, "top [--once]"));
    /* Refreshing until SIGINT, which ends it cleanly (exit 0); not a terminal: frames
     * one after another, no screen codes. The signal goes to top alone (--foreground):
     * without it timeout sends it to its whole process group a second time, and under
     * LeakSanitizer that second signal can reach the tracer of its exit-time leak check
     * and hang both for good (seen in CI). -k: a top that does not end is killed (exit
     * 137, a failure) rather than hanging the suite. */
    r = fl_test_run("timeout --foreground --preserve-status -k 20 -s INT 1.2 '%s' top --interval 0.2 --dir '%s'",
                    FL_CLI, dir);
    CHECK_EQ_U64(r->code, 0);
    int frames = 0;
    for (const char *p = r->out; (p = strstr(p, "fragless top ")); p++)
        frames++;
    CHECK(frames >= 3);
    CHECK(strchr(r->out, '\033') == NULL);
    r = fl_test_run("timeout --foreground --preserve-status -k 20 -s TERM 0.5 '%s' top --dir '%s'", FL_CLI, dir);
    CHECK_EQ_U64(r->code, 0);
}

/* In this process: the record matches fl_get_stats; two allocators on one device get
 * two files; destroy removes them; top:0 and the sim device publish nothing; a directory
 * that cannot be written is an error naming it, and the allocator works anyway. */
static int count_records(void)
{
    fl_run_result *r = fl_test_run("ls -a '%s' | grep -c fragless", dir);
    return atoi(r->out);
}

static void test_in_process(void)
{
    fl_device *d = cuda_device(), *d2 = cuda_device();
    if (!d || !d2)
        return;
    fl_config cfg;
    fl_config_default(&cfg);
    fl_allocator *a = NULL, *b = NULL;
    CHECK_OK(fl_allocator_create(&cfg, d, &a));
    CHECK_OK(fl_allocator_create(&cfg, d2, &b));
    char pa[256], pb[272];
    record_path(pa, sizeof pa, (uint64_t)getpid(), 0);
    snprintf(pb, sizeof pb, "%s.1", pa);
    CHECK(exists(pa) && exists(pb));
    uint64_t x, y;
    CHECK_OK(fl_alloc(a, 10 * MiB, 0, &x));
    CHECK_OK(fl_alloc(a, 4096, 0, &y));
    CHECK_OK(fl_free(a, y));
    CHECK_OK(fl_set_limit(a, 64 * MiB)); /* publishes */
    fl_stats st;
    fl_get_stats(a, &st);
    fli_pub_entry e;
    CHECK_OK(fli_publish_read(pa, &e));
    CHECK(memcmp(&e.stats, &st, sizeof st) == 0);
    CHECK_EQ_U64(e.stats.allocated_bytes.current, 10 * MiB);
    CHECK_EQ_U64(e.stats.limit, 64 * MiB);
    /* Out of memory publishes at once, with the OOM counted. */
    uint64_t z;
    fl_config_default(&cfg);
    CHECK_STATUS(fl_alloc(a, 100 * MiB, 0, &z), FL_ERR_OOM);
    CHECK_OK(fli_publish_read(pa, &e));
    CHECK_EQ_U64(e.stats.num_ooms, 1);
    CHECK_OK(fli_publish_read(pb, &e));
    CHECK_EQ_U64(e.stats.allocated_bytes.current, 0);
    CHECK_OK(fl_free(a, x));
    fl_allocator_destroy(a);
    CHECK(!exists(pa) && exists(pb));
    fl_allocator_destroy(b);
    CHECK(!exists(pb));
    CHECK_EQ_U64(count_records(), 0);

    cfg.publish = 0;
    CHECK_OK(fl_allocator_create(&cfg, d, &a));
    CHECK_EQ_U64(count_records(), 0);
    fl_allocator_destroy(a);
    fl_config_default(&cfg);
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    fl_device *sim = NULL;
    CHECK_OK(fl_sim_device_create(&sp, &sim));
    if (sim) {
        CHECK_OK(fl_allocator_create(&cfg, sim, &a));
        CHECK_EQ_U64(count_records(), 0);
        fl_allocator_destroy(a);
        fl_device_destroy(sim);
    }

    setenv("FRAGLESS_TOP_DIR", "/nonexistent/fl_top_dir", 1);
    fli_publisher *p = NULL;
    CHECK_STATUS(fli_publish_open(0, "", &p), FL_ERR_IO);
    CHECK(p == NULL);
    CHECK_MENTIONS("/nonexistent/fl_top_dir/");
    CHECK_MENTIONS("No such file or directory");
    fflush(stderr);
    CHECK_OK(fl_allocator_create(&cfg, d, &a)); /* says so on stderr, and works */
    if (a) {
        CHECK_OK(fl_alloc(a, MiB, 0, &x));
        CHECK_OK(fl_free(a, x));
        fl_allocator_destroy(a);
    }
    setenv("FRAGLESS_TOP_DIR", dir, 1);
    fl_device_destroy(d);
    fl_device_destroy(d2);
}


/* Threads mode: stream-local operations take no lock, and the lock is where the record is
 * written. What a thread did since the record was last written stays under a slack
 * (max(2 MiB, 1/256 of the allocated bytes)) after each of its operations, so the record
 * of a job that went idle is its final state within that slack per thread: here, 600
 * blocks of 64 KiB allocated and all but one freed, each thread on its own stream. */
static void *churn(void *arg)
{
    fl_allocator *a = arg;
    static _Thread_local uint64_t x[600];
    uint64_t stream = (uint64_t)(uintptr_t)pthread_self() & 0xffff;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 600; i++)
            if (fl_alloc(a, 64 << 10, stream + 1, &x[i]) != FL_OK)
                return (void *)1;
        for (int i = round == 2; i < 600; i++)
            if (fl_free(a, x[i]) != FL_OK)
                return (void *)1;
    }
    return NULL;
}

static void test_threads_idle_state(void)
{
    fl_device *d = cuda_device();
    if (!d)
        return;
    fl_config cfg;
    fl_config_default(&cfg);
    fl_allocator *a = NULL;
    CHECK_OK(fl_allocator_create(&cfg, d, &a));
    if (!a) {
        fl_device_destroy(d);
        return;
    }
    CHECK_OK(fli_allocator_threads(a));
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, churn, a) == 0);
    for (int i = 0; i < 2; i++) {
        void *r = NULL;
        pthread_join(t[i], &r);
        CHECK(r == NULL);
    }
    char pa[256];
    record_path(pa, sizeof pa, (uint64_t)getpid(), 0);
    fli_pub_entry e;
    CHECK_OK(fli_publish_read(pa, &e));
    /* Each thread left one 64 KiB block live: the truth is 128 KiB. */
    uint64_t live = e.stats.allocated_bytes.current, slack = 2 * (2 * MiB + (64 << 10));
    printf("threads mode, idle: record says %llu bytes allocated, truth %llu\n", (unsigned long long)live,
           (unsigned long long)(128 << 10));
    CHECK(live <= (128 << 10) + slack);
    CHECK(fli_allocator_unlocked_allocs(a, NULL) > 0); /* the stream-local way was taken */
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* ---- the seqlock ------------------------------------------------------------------------ */

enum { WRITERS = 2 };
#define WRITE_NS (300 * 1000 * 1000) /* each writer updates for this long */

static atomic_int writers_done, readers_ready;
static uint64_t updates[WRITERS]; /* written by writer i, read after joining it */

/* Update k writes word i of the statistics as k * 64 + i: a torn copy mixes two k. */
static void stats_for(uint64_t k, fl_stats *s)
{
    uint64_t w[sizeof(fl_stats) / 8];
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
        w[i] = k * 64 + i;
    memcpy(s, w, sizeof w);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct writer_arg {
    fli_publisher *p;
    uint64_t *updates;
} writer_arg;

static void *writer(void *arg)
{
    writer_arg *w = arg;
    fl_stats s;
    while (atomic_load(&readers_ready) < WRITERS)
        ;
    uint64_t k = 0, end = mono_ns() + WRITE_NS;
    do {
        for (int i = 0; i < 256; i++) {
            stats_for(++k, &s);
            fli_publish_update(w->p, &s);
        }
    } while (mono_ns() < end);
    *w->updates = k;
    atomic_fetch_add(&writers_done, 1);
    return NULL;
}

typedef struct reader_state {
    const char *path;
    uint64_t reads, torn, backwards, busy, distinct, last_k;
} reader_state;

static void *reader(void *arg)
{
    reader_state *r = arg;
    fli_pub_reader rec;
    if (fli_pub_reader_open(r->path, &rec) != FL_OK) {
        fprintf(stderr, "reader: %s\n", fl_last_error());
        r->torn++;
        atomic_fetch_add(&readers_ready, 1); /* the writers wait for every reader: never hang them */
        return NULL;
    }
    uint64_t last = 0;
    atomic_fetch_add(&readers_ready, 1);
    for (int done = 0; !done;) {
        done = atomic_load(&writers_done) == WRITERS; /* one last read after the writers */
        fli_pub_entry e;
        if (fli_pub_reader_snapshot(&rec, 0, &e) != FL_PUB_WHOLE) {
            r->busy++;
            continue;
        }
        r->reads++;
        uint64_t w[sizeof(fl_stats) / 8];
        memcpy(w, &e.stats, sizeof w);
        uint64_t k = w[0] / 64;
        /* seq 0: the record as opened, all statistics 0. */
        int ok = e.seq == 2 * k && e.seq % 2 == 0;
        for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
            ok = ok && w[i] == (e.seq ? k * 64 + i : 0);
        ok = ok && e.stats.allocated_bytes.current <= e.stats.reserved_bytes.current;
        if (!ok && r->torn++ < 3)
            fprintf(stderr, "torn record: seq %llu, word 0 %llu, word 44 %llu\n", (unsigned long long)e.seq,
                    (unsigned long long)w[0], (unsigned long long)w[44]);
        if (k < last)
            r->backwards++;
        if (k != last)
            r->distinct++;
        last = k;
    }
    r->last_k = last;
    fli_pub_reader_close(&rec);
    return NULL;
}

static void test_seqlock(void)
{
    fli_publisher *p[WRITERS] = {0};
    reader_state rs[WRITERS];
    pthread_t wt[WRITERS], rt[WRITERS];
    memset(rs, 0, sizeof rs);
    for (int i = 0; i < WRITERS; i++) {
        CHECK_OK(fli_publish_open(5 + i, "", &p[i]));
        if (!p[i])
            return;
        rs[i].path = fli_publish_path(p[i]);
    }
    for (int i = 0; i < WRITERS; i++)
        pthread_create(&rt[i], NULL, reader, &rs[i]);
    writer_arg wa[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        wa[i] = (writer_arg){p[i], &updates[i]};
        pthread_create(&wt[i], NULL, writer, &wa[i]);
    }
    for (int i = 0; i < WRITERS; i++)
        pthread_join(wt[i], NULL);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(rt[i], NULL);
    for (int i = 0; i < WRITERS; i++) {
        fprintf(stderr, "seqlock %d: %llu updates, %llu reads, %llu values seen, %llu busy\n", i,
                (unsigned long long)updates[i], (unsigned long long)rs[i].reads, (unsigned long long)rs[i].distinct,
                (unsigned long long)rs[i].busy);
        CHECK_EQ_U64(rs[i].torn, 0);
        CHECK_EQ_U64(rs[i].backwards, 0);
        CHECK(rs[i].reads > 0 && rs[i].busy <= rs[i].reads / 100); /* a writer preempted mid-update */
        CHECK(rs[i].distinct >= 3); /* the reads overlapped the updates (2 cores: few switches) */
        CHECK_EQ_U64(rs[i].last_k, updates[i]); /* the final read sees the last update */
        fli_pub_entry e;
        CHECK_OK(fli_publish_read(rs[i].path, &e));
        CHECK_EQ_U64(e.seq, 2 * updates[i]);
        CHECK_EQ_U64(e.device, 5 + i);
        char path[256];
        snprintf(path, sizeof path, "%s", rs[i].path);
        fli_publish_close(p[i]);
        CHECK(!exists(path));
    }
}

int main(void)
{
    if (!fake_path[0])
        fl_test_skip("the driver double was not built (FAKECUDA_PATH)");
    snprintf(dir, sizeof dir, "/tmp/fl_top.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    setenv("FRAGLESS_TOP_DIR", dir, 1);
    setenv("FAKECUDA_CAPACITY", "128M", 1);
    unsetenv("FRAGLESS_CONF");
    /* Children first: they load the double themselves. */
    test_child_listed_and_removed();
    test_killed_child_left_then_removed();
    test_reused_pid();
    test_malformed_skipped();
    test_usage_and_refresh();
    test_in_process();
    test_threads_idle_state();
    test_seqlock();
    CHECK_EQ_U64(count_records(), 0);
    rmdir(dir);
    return fl_test_done("test_top");
}
