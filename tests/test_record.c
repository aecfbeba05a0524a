/* Trace recording (FRAGLESS_CONF=trace:PATH): an allocator writes every allocation,
 * free and failed allocation as RMM CSV rows, from many threads, in a file the strict
 * reader accepts and replay can run; a bad path is a clear error. */
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "replay/replay.h"
#include "test_support.h"

/* In a child whose files may not grow past 16 KiB: the recording's writes fail after its
 * first rows; the flush a reader asks for and the stop say so (naming the file), and the
 * allocator goes on. Exit code: the number of failed expectations. */
static int full_disk_child(const char *path)
{
    signal(SIGXFSZ, SIG_IGN); /* the write fails with EFBIG instead of killing */
    struct rlimit rl = {16384, 16384};
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
        return 100;
    fl_device *d = fl_test_sim(0, 0);
    fl_allocator *a = fl_test_allocator("policy:fragless,oom_report:0,top:0", d);
    int bad = 0;
    bad += fli_allocator_trace(a, path) != FL_OK;
    bad += fli_allocator_trace_flush(a) != FL_OK; /* the header and nothing else: fine */
    uint64_t x;
    for (int i = 0; i < 2000; i++) /* ~60 bytes a row: past 16 KiB */
        bad += fl_alloc(a, 4096, 1, &x) != FL_OK || fl_free(a, x) != FL_OK;
    bad += fli_allocator_trace_flush(a) != FL_ERR_IO;
    bad += strstr(fl_last_error(), path) == NULL || strstr(fl_last_error(), "write error") == NULL;
    bad += fl_alloc(a, 4096, 1, &x) != FL_OK || fl_free(a, x) != FL_OK; /* recording stopped, allocating not */
    bad += fli_allocator_trace(a, NULL) != FL_ERR_IO; /* the stop says it too */
    bad += strstr(fl_last_error(), "holds only the rows written before it") == NULL;
    bad += fl_allocator_check(a) != 0;
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    return bad;
}

typedef struct job {
    fl_allocator *a;
    uint64_t stream;
    int allocs, frees;
} job;

static void *worker(void *arg)
{
    job *j = arg;
    fl_rng rng = {j->stream * 7919 + 1};
    uint64_t live[16] = {0};
    for (int i = 0; i < 2000; i++) {
        int k = (int)fl_rng_below(&rng, 16);
        if (live[k]) {
            CHECK_OK(fl_free(j->a, live[k]));
            live[k] = 0;
            j->frees++;
        } else if (fl_alloc(j->a, 1 + fl_rng_below(&rng, 3 << 20), j->stream, &live[k]) == FL_OK) {
            j->allocs++;
        }
    }
    for (int k = 0; k < 16; k++)
        if (live[k]) {
            CHECK_OK(fl_free(j->a, live[k]));
            j->frees++;
        }
    return NULL;
}

int main(void)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/fl_record.%d.csv", (int)getpid());
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.capacity = 256u << 20;
    fl_device *d;
    CHECK_OK(fl_sim_device_create(&sp, &d));
    fl_config cfg;
    fl_config_default(&cfg);
    char conf[128];
    snprintf(conf, sizeof conf, "policy:fragless,trace:%s", path);
    CHECK_OK(fl_config_parse(&cfg, conf));
    fl_allocator *a;
    CHECK_OK(fl_allocator_create(&cfg, d, &a));
    job jobs[2] = {{a, 1, 0, 0}, {a, 2, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, worker, &jobs[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    uint64_t x;
    CHECK_STATUS(fl_alloc(a, UINT64_C(1) << 40, 3, &x), FL_ERR_OOM); /* recorded as a failure */
    fl_allocator_destroy(a);
    fl_device_destroy(d);

    fli_trace tr;
    CHECK_OK(fli_trace_read_csv(path, &tr));
    CHECK_EQ_U64(tr.n_warnings, 0);
    uint64_t allocs = 0, frees = 0, fails = 0;
    for (size_t i = 0; i < tr.n; i++) {
        allocs += tr.ev[i].kind == FL_EV_ALLOC;
        frees += tr.ev[i].kind == FL_EV_FREE;
        fails += tr.ev[i].kind == FL_EV_ALLOC_FAIL;
        CHECK(tr.ev[i].kind != FL_EV_FREE || tr.ev[i].size > 0); /* frees carry the size */
    }
    CHECK_EQ_U64(allocs, jobs[0].allocs + jobs[1].allocs);
    CHECK_EQ_U64(frees, jobs[0].frees + jobs[1].frees);
    CHECK(fails >= 1);
    fli_prepared *p;
    CHECK_OK(fli_prepare(&tr, &p));
    CHECK_EQ_U64(p->unknown_frees, 0);
    CHECK_EQ_U64(p->n_streams, 3);
    CHECK_EQ_U64(p->end_live, 0);
    fli_prepared_free(p);
    fli_trace_free(&tr);
    unlink(path);

    /* A path that cannot be opened: the allocator is not made, the error says why. */
    CHECK_OK(fl_sim_device_create(&sp, &d));
    CHECK_OK(fl_config_parse(&cfg, "trace:/nonexistent/dir/t.csv"));
    CHECK_STATUS(fl_allocator_create(&cfg, d, &a), FL_ERR_IO);
    CHECK(strstr(fl_last_error(), "/nonexistent/dir/t.csv") != NULL);
    fl_device_destroy(d);

    /* A write that fails later (a full disk): reported to whoever flushes or stops. */
    pid_t pid = fork();
    if (pid == 0)
        _exit(full_disk_child(path));
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st));
    CHECK_EQ_U64(WEXITSTATUS(st), 0);
    unlink(path);
    return fl_test_done("test_record");
}
