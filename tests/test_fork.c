/* Processes (issue 15, items 2, 4 and 9): a forked child can allocate and free whatever
 * the parent's threads were doing at the fork (DataLoader workers); the child records no
 * rows into the parent's trace; a trace holds whole lines only when exit() comes while
 * threads allocate; several processes given one trace path never share one file; one
 * allocator per device. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "frontend/frontend.h"
#include "test_support.h"
#include "trace/trace.h"

#define MiB (UINT64_C(1) << 20)

static char tmpdir[256];

/* ---- fork while another thread holds the allocator -------------------------------- */

typedef struct churn {
    fl_allocator *a;
    _Atomic int stop;
    _Atomic uint64_t ops;
} churn;

static void *churn_thread(void *arg)
{
    churn *c = arg;
    uint64_t x[16] = {0};
    for (uint64_t i = 0; !atomic_load(&c->stop); i++) {
        uint64_t k = i % 16;
        if (x[k]) {
            CHECK_OK(fl_free(c->a, x[k]));
            x[k] = 0;
        } else {
            CHECK_OK(fl_alloc(c->a, 512 * (1 + i % 40), 7, &x[k]));
        }
        atomic_fetch_add(&c->ops, 1);
    }
    for (int k = 0; k < 16; k++)
        if (x[k])
            CHECK_OK(fl_free(c->a, x[k]));
    return NULL;
}

/* The child frees a block of the parent's and allocates; a hang (the lock held by a
 * thread that does not exist in the child) ends with SIGALRM. */
static void test_fork_while_busy(const char *policy)
{
    fl_device *d = fl_test_sim(256 * MiB, 0);
    fl_allocator *a = fl_test_allocator(policy, d);
    churn c = {a, 0, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, churn_thread, &c) == 0);
    int hangs = 0, bad = 0;
    for (int i = 0; i < 60; i++) {
        uint64_t mine;
        CHECK_OK(fl_alloc(a, 3 * MiB, 0, &mine));
        while (atomic_load(&c.ops) < (uint64_t)(i + 1) * 50)
            sched_yield();
        pid_t pid = fork();
        if (pid == 0) {
            alarm(10);
            uint64_t x;
            int ok = fl_free(a, mine) == FL_OK && fl_alloc(a, 5 * MiB, 0, &x) == FL_OK && fl_free(a, x) == FL_OK &&
                     fl_allocator_check(a) == 0;
            _exit(ok ? 0 : 1);
        }
        CHECK(pid > 0);
        int st = 0;
        CHECK(waitpid(pid, &st, 0) == pid);
        hangs += WIFSIGNALED(st);
        bad += WIFEXITED(st) && WEXITSTATUS(st) != 0;
        CHECK_OK(fl_free(a, mine));
    }
    atomic_store(&c.stop, 1);
    pthread_join(t, NULL);
    CHECK_EQ_U64(hangs, 0);
    CHECK_EQ_U64(bad, 0);
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* ---- fork while another thread makes a device's allocator ----------------------- */

/* The frontends' table of allocators (src/frontend/torch.c) is locked while a device's
 * allocator is made, which takes driver calls (a context, the device's properties). A
 * fork meanwhile gave the child the lock held, by a thread the child does not have: the
 * child's first call that takes it (here a pool opened, as fragless.torch.pool() does)
 * waited forever. The fork now waits for the table. The driver double holds the maker
 * inside cuDevicePrimaryCtxRetain while another thread forks. */
static void *make_device_allocator(void *arg)
{
    (void)arg;
    return fli_frontend_allocator(0);
}

static void *fork_and_open_pool(void *arg)
{
    pid_t *pid = arg;
    *pid = fork();
    if (*pid == 0) {
        alarm(10);
        _exit(fragless_torch_pool_open("policy:cca") > 0 ? 0 : 1);
    }
    return NULL;
}

static void test_fork_while_making(void)
{
    void (*hold)(const char *) = NULL, (*release)(void) = NULL;
    int (*held)(void) = NULL;
    void *lib = FL_TEST_FAKECUDA[0] ? fl_test_fakecuda() : NULL;
    if (!lib) {
        printf("test_fork: the driver double was not built; fork while making an allocator not checked\n");
        return;
    }
    if (!fl_test_sym(lib, "fakecuda_hold_call", &hold) || !fl_test_sym(lib, "fakecuda_held", &held) ||
        !fl_test_sym(lib, "fakecuda_release_held", &release))
        return;
    setenv("FRAGLESS_CUDA_LIB", FL_TEST_FAKECUDA, 1);
    setenv("FRAGLESS_CONF", "top:0,oom_report:0", 1);
    hold("cuDevicePrimaryCtxRetain");
    pthread_t maker, forking;
    CHECK(pthread_create(&maker, NULL, make_device_allocator, NULL) == 0);
    for (int i = 0; i < 5000 && !held(); i++)
        usleep(1000);
    CHECK(held());
    pid_t pid = -1;
    CHECK(pthread_create(&forking, NULL, fork_and_open_pool, &pid) == 0);
    usleep(100 * 1000); /* a fork that does not wait for the table happens now */
    release();
    void *made = NULL;
    CHECK(pthread_join(maker, &made) == 0 && made != NULL);
    CHECK(pthread_join(forking, NULL) == 0);
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (!WIFEXITED(st))
        fprintf(stderr, "  the child forked while the allocator was made hung (signal %d)\n",
                WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* ---- the recorder and fork -------------------------------------------------------- */

static fli_trace read_trace(const char *path)
{
    fli_trace t;
    if (fli_trace_read_csv(path, &t) != FL_OK) {
        fprintf(stderr, "%s\n", fl_last_error());
        CHECK(!"the recorded trace reads back");
    }
    return t;
}

/* Rows buffered in the parent at the fork are written once, by the parent; the child's
 * own operations are not in the parent's file. */
static void test_fork_recorder(void)
{
    char path[300], conf[400];
    snprintf(path, sizeof path, "%s/fork.csv", tmpdir);
    snprintf(conf, sizeof conf, "policy:fragless,trace:%s", path);
    fl_device *d = fl_test_sim(256 * MiB, 0);
    fl_allocator *a = fl_test_allocator(conf, d);
    uint64_t x[10];
    for (int i = 0; i < 10; i++)
        CHECK_OK(fl_alloc(a, MiB + 512 * (uint64_t)i, 0, &x[i]));
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t y;
        for (int i = 0; i < 100; i++)
            if (fl_alloc(a, 4096, 0, &y) == FL_OK)
                fl_free(a, y);
        exit(0); /* exit, not _exit: stdio and atexit handlers run, as in a worker */
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    for (int i = 0; i < 10; i++)
        CHECK_OK(fl_free(a, x[i]));
    fl_allocator_destroy(a);
    fli_trace t = read_trace(path);
    CHECK_EQ_U64(t.n, 20);
    CHECK_EQ_U64(t.n_warnings, 0);
    fli_trace_free(&t);
    fl_device_destroy(d);
}

/* The same process recording to the same path again replaces its own file. */
static void test_rerecord_same_process(void)
{
    char path[300], conf[400], other[340];
    snprintf(path, sizeof path, "%s/again.csv", tmpdir);
    snprintf(other, sizeof other, "%s.%ld", path, (long)getpid());
    snprintf(conf, sizeof conf, "policy:fragless,trace:%s", path);
    for (int round = 1; round <= 2; round++) {
        fl_device *d = fl_test_sim(64 * MiB, 0);
        fl_allocator *a = fl_test_allocator(conf, d);
        for (int i = 0; i < round; i++) {
            uint64_t x;
            CHECK_OK(fl_alloc(a, 4096, 0, &x));
            CHECK_OK(fl_free(a, x));
        }
        fl_allocator_destroy(a);
        fl_device_destroy(d);
    }
    fli_trace t = read_trace(path);
    CHECK_EQ_U64(t.n, 4); /* the second round's rows only */
    fli_trace_free(&t);
    CHECK(access(other, F_OK) != 0);
}

/* ---- exit() while threads allocate ------------------------------------------------- */

static void *spin_alloc(void *arg)
{
    fl_allocator *a = arg;
    for (uint64_t i = 0;; i++) {
        uint64_t x;
        if (fl_alloc(a, 512 + 512 * (i % 64), i % 3, &x) == FL_OK)
            fl_free(a, x);
    }
    return NULL;
}

static void test_exit_whole_lines(void)
{
    int cut = 0, lost_all = 0;
    for (int run = 0; run < 20; run++) {
        char path[300], conf[400];
        snprintf(path, sizeof path, "%s/exit%d.csv", tmpdir, run);
        snprintf(conf, sizeof conf, "policy:fragless,trace:%s", path);
        pid_t pid = fork();
        if (pid == 0) {
            fl_device *d = fl_test_sim(256 * MiB, 0);
            fl_allocator *a = fl_test_allocator(conf, d);
            uint64_t mine; /* two rows that must be in the file: written before exit() */
            if (fl_alloc(a, 4096, 0, &mine) != FL_OK || fl_free(a, mine) != FL_OK)
                _exit(1);
            pthread_t t[4];
            for (int i = 0; i < 4; i++)
                pthread_create(&t[i], NULL, spin_alloc, a);
            struct timespec ts = {0, (long)(5 + run % 7) * 1000000L};
            nanosleep(&ts, NULL);
            exit(0);
        }
        int st;
        CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
        fli_trace t;
        if (fli_trace_read_csv(path, &t) != FL_OK) {
            fprintf(stderr, "run %d: %s\n", run, fl_last_error());
            cut++;
            continue;
        }
        cut += t.n_warnings != 0;
        lost_all += t.n < 2;
        fli_trace_free(&t);
    }
    CHECK_EQ_U64(cut, 0);      /* every line whole */
    CHECK_EQ_U64(lost_all, 0); /* and the rows written before exit() are there */
}

/* ---- several processes, one trace path ---------------------------------------------- */

static int child_records(const char *path, int n, int delay_ms)
{
    struct timespec delay = {delay_ms / 1000, (long)(delay_ms % 1000) * 1000000L};
    nanosleep(&delay, NULL); /* started with the others; records after some have finished */
    char conf[400];
    snprintf(conf, sizeof conf, "policy:fragless,trace:%s", path);
    fl_device *d = fl_test_sim(256 * MiB, 0);
    fl_allocator *a = fl_test_allocator(conf, d);
    for (int i = 0; i < n; i++) {
        uint64_t x;
        if (fl_alloc(a, 4096, 0, &x) != FL_OK || fl_free(a, x) != FL_OK)
            return 1;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL); /* the three overlap in time */
    }
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    return 0;
}

static void test_processes_one_path(const char *self)
{
    char path[300];
    snprintf(path, sizeof path, "%s/job.csv", tmpdir);
    enum { PROCS = 3, OPS = 100 };
    /* The third starts recording after the first two have finished: their files, written
     * while it lived, are siblings' and are kept (an earlier run's would be replaced). */
    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            char n[16], delay[16];
            snprintf(n, sizeof n, "%d", OPS);
            snprintf(delay, sizeof delay, "%d", i == PROCS - 1 ? 400 : 0);
            execl(self, self, "--record", path, n, delay, (char *)NULL);
            _exit(127);
        }
    }
    for (int i = 0; i < PROCS; i++) {
        int st;
        CHECK(waitpid(pids[i], &st, 0) == pids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    /* PATH, and PATH.PID for each process that found PATH taken: 2 * OPS rows each. */
    size_t files = 0, rows = 0;
    char cand[PROCS + 1][320];
    snprintf(cand[0], sizeof cand[0], "%s", path);
    for (int i = 0; i < PROCS; i++)
        snprintf(cand[i + 1], sizeof cand[i + 1], "%s.%ld", path, (long)pids[i]);
    for (int i = 0; i <= PROCS; i++) {
        if (access(cand[i], F_OK) != 0)
            continue;
        fli_trace t = read_trace(cand[i]);
        CHECK_EQ_U64(t.n, 2 * OPS);
        CHECK_EQ_U64(t.n_warnings, 0);
        rows += t.n;
        files++;
        fli_trace_free(&t);
    }
    CHECK_EQ_U64(files, PROCS);
    CHECK_EQ_U64(rows, 2 * OPS * PROCS);
}

/* ---- one allocator per device ------------------------------------------------------ */

static void test_one_allocator_per_device(void)
{
    fl_device *d = fl_test_sim(64 * MiB, 0);
    fl_allocator *a = fl_test_allocator("fragless", d), *b = NULL;
    fl_config cfg;
    fl_config_default(&cfg);
    CHECK_STATUS(fl_allocator_create(&cfg, d, &b), FL_ERR_INVALID);
    CHECK(b == NULL);
    CHECK_MENTIONS("one allocator per device");
    uint64_t x;
    CHECK_OK(fl_alloc(a, MiB, 0, &x)); /* the first is untouched */
    CHECK_OK(fl_free(a, x));
    fl_allocator_destroy(a);
    CHECK_OK(fl_allocator_create(&cfg, d, &b)); /* free again once it is gone */
    fl_allocator_destroy(b);
    fl_device_destroy(d);
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "--record"))
        return child_records(argv[2], atoi(argv[3]), atoi(argv[4]));
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fl_test_fork.XXXXXX");
    CHECK(mkdtemp(tmpdir) != NULL);
    test_one_allocator_per_device();
    test_fork_while_busy("fragless");
    test_fork_while_busy("cca");
    test_fork_while_busy("nocache");
    test_fork_recorder();
    test_fork_while_making();
    test_rerecord_same_process();
    test_exit_whole_lines();
    test_processes_one_path(argv[0]);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return fl_test_done("test_fork");
}
