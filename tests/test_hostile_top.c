/* Issue 15, item 3: `fragless top` reads files anyone can write (/dev/shm), so none of
 * them may crash it, hang it, slow it down, impersonate another process or reach the
 * terminal with escape sequences:
 *   - a record truncated and regrown while it is read (was SIGBUS through the mapping);
 *   - a FIFO with a record's name (open() blocked forever);
 *   - 200 records whose sequence number stays odd (each waited ~120 ms: 24 s a frame);
 *   - a record claiming a process of another user (shown as that process);
 *   - control characters in COMMAND and in file names (written to the terminal raw). */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "test_support.h"

static char dir[64];

/* top --once under a 10 s timeout (exit 124 when it hangs). */
static fl_run_result *top_once(void)
{
    return fl_test_run("FRAGLESS_NVML_LIB=/nonexistent/libnvidia-ml.so.1 timeout -k 10 10 '%s' top --once --dir '%s'", FL_CLI,
               dir);
}

static void make_record(fli_pub_record *rec, uint64_t pid, const char *comm)
{
    memset(rec, 0, sizeof *rec);
    rec->magic = FL_PUB_MAGIC;
    rec->version = FL_PUB_VERSION;
    rec->size = sizeof *rec;
    rec->pid = pid;
    rec->start_time = fli_proc_start_time(pid);
    snprintf(rec->comm, sizeof rec->comm, "%s", comm);
}

static void write_record(const char *path, const fli_pub_record *rec)
{
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(rec, sizeof *rec, 1, f) == 1);
    if (f)
        fclose(f);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void clear_dir(void)
{
    fl_test_run("rm -f '%s'/fragless.* '%s'/.fragless.*", dir, dir);
}

/* A child cuts the record to nothing and writes it back, over and over, while another
 * reads it: no read may die (SIGBUS), and every read is whole or an error. */
static void test_truncated_while_read(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/fragless.%d.0", dir, (int)getpid());
    fli_pub_record rec;
    make_record(&rec, (uint64_t)getpid(), "cut");
    write_record(path, &rec);
    fflush(NULL);
    pid_t cutter = fork();
    if (cutter == 0) {
        int fd = open(path, O_RDWR);
        for (;;) {
            if (ftruncate(fd, 0) != 0 || pwrite(fd, &rec, sizeof rec, 0) != (ssize_t)sizeof rec)
                _exit(1);
        }
    }
    pid_t reader = fork();
    if (reader == 0) {
        double end = now_s() + 1.5;
        unsigned long whole = 0, refused = 0;
        while (now_s() < end) {
            for (int i = 0; i < 100; i++) {
                fli_pub_entry e;
                if (fli_publish_read(path, &e) == FL_OK) {
                    if (e.pid != (uint64_t)getppid() || strcmp(e.comm, "cut") != 0)
                        _exit(2); /* a torn header */
                    whole++;
                } else {
                    refused++;
                }
            }
        }
        fprintf(stderr, "truncated while read: %lu whole reads, %lu refused\n", whole, refused);
        _exit(0);
    }
    int st = 0;
    waitpid(reader, &st, 0);
    if (WIFSIGNALED(st))
        fprintf(stderr, "the reader died of signal %d (%s)\n", WTERMSIG(st), strsignal(WTERMSIG(st)));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    kill(cutter, SIGKILL);
    waitpid(cutter, NULL, 0);
    /* top itself, on the same kind of file, many frames. */
    fflush(NULL);
    cutter = fork();
    if (cutter == 0) {
        int fd = open(path, O_RDWR);
        for (;;) {
            if (ftruncate(fd, 0) != 0 || pwrite(fd, &rec, sizeof rec, 0) != (ssize_t)sizeof rec)
                _exit(1);
        }
    }
    fl_run_result *r = fl_test_run("for i in $(seq 40); do FRAGLESS_NVML_LIB=/nonexistent timeout -k 10 10 '%s' top --once --dir "
                           "'%s' >/dev/null || { echo \"exit $?\"; exit 1; }; done",
                           FL_CLI, dir);
    if (r->code != 0)
        fprintf(stderr, "top on a record being cut: %s%s\n", r->out, r->err);
    CHECK_EQ_U64(r->code, 0);
    kill(cutter, SIGKILL);
    waitpid(cutter, NULL, 0);
    clear_dir();
}

/* A FIFO (and a directory, a symlink) named like a record: skipped, never opened for
 * long. */
static void test_fifo(void)
{
    char fifo[256], sub[256], link[256], want[400];
    snprintf(fifo, sizeof fifo, "%s/fragless.1.0", dir);
    snprintf(sub, sizeof sub, "%s/fragless.2.0", dir);
    snprintf(link, sizeof link, "%s/fragless.3.0", dir);
    CHECK(mkfifo(fifo, 0666) == 0);
    CHECK(mkdir(sub, 0755) == 0);
    CHECK(symlink("/dev/zero", link) == 0);
    double t0 = now_s();
    fl_run_result *r = top_once();
    CHECK_EQ_U64(r->code, 0);
    CHECK(now_s() - t0 < 5);
    snprintf(want, sizeof want, "skipped %s: not a regular file", fifo);
    CHECK(strstr(r->out, want) != NULL);
    snprintf(want, sizeof want, "skipped %s: not a regular file", sub);
    CHECK(strstr(r->out, want) != NULL);
    snprintf(want, sizeof want, "skipped %s: not a regular file", link);
    CHECK(strstr(r->out, want) != NULL);
    /* Skipped, not removed: they are someone else's. */
    struct stat st;
    CHECK(lstat(fifo, &st) == 0 && lstat(sub, &st) == 0 && lstat(link, &st) == 0);
    unlink(fifo);
    rmdir(sub);
    unlink(link);
}

/* 200 records of a live process, each stuck mid-update (odd seq): the frame still takes
 * well under a second, and each is named as busy. */
static void test_odd_sequences(void)
{
    fli_pub_record rec;
    make_record(&rec, (uint64_t)getpid(), "stuck");
    atomic_store(&rec.seq, 1);
    for (int i = 0; i < 200; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/fragless.%d.%d", dir, (int)getpid(), i);
        write_record(path, &rec);
    }
    double t0 = now_s();
    fl_run_result *r = top_once();
    double took = now_s() - t0;
    fprintf(stderr, "a frame of 200 busy records: %.2f s\n", took);
    CHECK_EQ_U64(r->code, 0);
    CHECK(took < 2.0);
    CHECK(strstr(r->out, "every read met an update in progress") != NULL);
    clear_dir();
}

/* A record owned by one user that names another user's process is not shown as it. */
static void test_claimed_pid(void)
{
    char path[256], want[400];
    snprintf(path, sizeof path, "%s/fragless.1.0", dir);
    fli_pub_record rec;
    make_record(&rec, 1, "impostor"); /* pid 1: root's */
    write_record(path, &rec);
    if (getuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw || pw->pw_uid == 0 || chown(path, pw->pw_uid, pw->pw_gid) != 0) {
            fprintf(stderr, "note: no user 'nobody' to own the impostor's file: case skipped\n");
            unlink(path);
            return;
        }
    }
    struct stat st;
    if (stat("/proc/1", &st) != 0 || st.st_uid != 0) {
        fprintf(stderr, "note: /proc/1 is not root's here: case skipped\n");
        unlink(path);
        return;
    }
    fl_run_result *r = top_once();
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "impostor") == NULL);
    snprintf(want, sizeof want, "skipped %s: pid 1 is not a process of the file's owner", path);
    CHECK(strstr(r->out, want) != NULL);
    CHECK(lstat(path, &st) == 0); /* skipped, not removed */
    unlink(path);
}

/* Escape sequences in COMMAND and in a file name reach the output escaped. */
static void test_control_characters(void)
{
    char path[256], evil_name[256];
    snprintf(path, sizeof path, "%s/fragless.%d.0", dir, (int)getpid());
    fli_pub_record rec;
    make_record(&rec, (uint64_t)getpid(), "\033[2J\033]0;owned\007x");
    write_record(path, &rec);
    snprintf(evil_name, sizeof evil_name, "%s/fragless.\033[31m\r\n", dir);
    FILE *f = fopen(evil_name, "w");
    fputs("junk", f);
    fclose(f);
    fl_run_result *r = top_once();
    CHECK_EQ_U64(r->code, 0);
    CHECK(strchr(r->out, '\033') == NULL);
    CHECK(strchr(r->out, '\007') == NULL);
    CHECK(strchr(r->out, '\r') == NULL);
    CHECK(strstr(r->out, "\\x1b[2J") != NULL);                /* COMMAND, escaped */
    CHECK(strstr(r->out, "fragless.\\x1b[31m\\r\\n") != NULL); /* the file name in the note */
    unlink(path);
    unlink(evil_name);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/fl_top_hostile.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    unsetenv("FRAGLESS_CONF");
    test_fifo();
    test_odd_sequences();
    test_claimed_pid();
    test_control_characters();
    test_truncated_while_read();
    fl_test_run("rm -rf '%s'", dir);
    return fl_test_done("test_hostile_top");
}
