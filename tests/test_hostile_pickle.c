/* Issue 15, item 5: a pickle's memo lets one object appear in many places, so a small
 * file can describe a huge snapshot: one segment dict listed 100,000 times, whose blocks
 * list holds one block dict 10,000 times, is ~220 KB of pickle and 10^9 blocks to convert
 * (48 GB of events). The conversion (src/pytorch/snapshot.c) must stop at its budget with
 * an error naming it, quickly and in little memory; honest snapshots are far below it. */
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pytorch/snapshot.h"
#include "test_support.h"

/* No RLIMIT_AS under AddressSanitizer (FL_TEST_UNDER_ASAN): the time limit and the
 * budget's message still tell. */

typedef struct buf {
    unsigned char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}
static void op(buf *b, unsigned char c) { put(b, &c, 1); }
static void str(buf *b, const char *s) /* BINUNICODE */
{
    uint32_t n = (uint32_t)strlen(s);
    op(b, 'X');
    put(b, &n, 4);
    put(b, s, n);
}
static void u32(buf *b, uint32_t v) /* BININT */
{
    op(b, 'J');
    put(b, &v, 4);
}

/* {'device_traces': [[]] or [[alloc...]], 'segments': [seg] * n_seg} with seg's
 * 'blocks' = [block] * n_blocks, every repetition a memo reference (BINGET). */
static buf hostile(uint32_t n_seg, uint32_t n_blocks)
{
    buf b = {0};
    put(&b, "\x80\x02}(", 4); /* PROTO 2, EMPTY_DICT, MARK */
    str(&b, "device_traces");
    put(&b, "](]e", 4); /* [[]] */
    str(&b, "segments");
    put(&b, "](}(", 4); /* [ MARK { MARK */
    str(&b, "device");
    u32(&b, 0);
    str(&b, "address");
    u32(&b, 1u << 30);
    str(&b, "total_size");
    u32(&b, 2u << 20);
    str(&b, "stream");
    u32(&b, 0);
    str(&b, "blocks");
    put(&b, "](}(", 4);
    str(&b, "size");
    u32(&b, 512);
    str(&b, "state");
    str(&b, "active_allocated");
    put(&b, "uq\x02", 3); /* SETITEMS, BINPUT 2: the block */
    for (uint32_t i = 1; i < n_blocks; i++)
        put(&b, "h\x02", 2);
    op(&b, 'e');
    put(&b, "uq\x01", 3); /* the segment: BINPUT 1 */
    for (uint32_t i = 1; i < n_seg; i++)
        put(&b, "h\x01", 2);
    op(&b, 'e');
    put(&b, "u.", 2);
    return b;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* In a child with 1 GiB of address space (not under ASan) and 60 s: the conversion fails with the budget
 * in its message, within a second or two. */
static void test_expansion_refused(void)
{
    buf b = hostile(100000, 10000);
    fprintf(stderr, "hostile pickle: %zu bytes, 10^9 blocks\n", b.n);
    CHECK(b.n < 520 * 1024);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit lim = {(rlim_t)1 << 30, (rlim_t)1 << 30};
        if (!FL_TEST_UNDER_ASAN)
            setrlimit(RLIMIT_AS, &lim);
        alarm(60);
        double t0 = now_s();
        fli_pk_doc *doc = NULL;
        if (fli_pickle_load_memory(b.p, b.n, "hostile.pickle", 0, &doc) != FL_OK) {
            fprintf(stderr, "child: %s\n", fl_last_error());
            _exit(2);
        }
        fli_trace t;
        fli_snapshot_info info;
        fl_status s = fli_snapshot_to_trace(doc, NULL, 0, &t, &info);
        double took = now_s() - t0;
        fprintf(stderr, "child: %s in %.2f s: %s\n", fl_status_str(s), took, fl_last_error());
        if (s != FL_ERR_PARSE || !strstr(fl_last_error(), "budget") || !strstr(fl_last_error(), "segments["))
            _exit(3);
        _exit(took < 5 ? 0 : 4);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st))
        fprintf(stderr, "the conversion died of signal %d\n", WTERMSIG(st));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    /* Through the commands: exit 2 (bad input) with the budget named. */
    char path[] = "/tmp/fl_hostile_pickle.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, b.p, b.n) == (ssize_t)b.n);
    close(fd);
    char cmd[512];
    const char *limit = FL_TEST_UNDER_ASAN ? "" : "ulimit -v 1048576;";
    snprintf(cmd, sizeof cmd, "%s timeout -k 10 60 '%s' import '%s' -o /dev/null", limit, FL_CLI, path);
    fl_run_result *r = fl_test_shell(cmd);
    CHECK_EQ_U64(r->code, 2);
    CHECK(strstr(r->err, "budget") != NULL);
    snprintf(cmd, sizeof cmd, "%s timeout -k 10 60 '%s' compare '%s' --no-min-capacity", limit, FL_CLI, path);
    r = fl_test_shell(cmd);
    CHECK_EQ_U64(r->code, 2);
    CHECK(strstr(r->err, "budget") != NULL);
    unlink(path);
    free(b.p);
}

/* The same shape, small enough to be an honest snapshot: converted (one event per block
 * of each segment). Sharing itself is legal in a pickle; only its cost is bounded. */
static void test_small_sharing_converts(void)
{
    buf b = hostile(20, 50);
    fli_pk_doc *doc = NULL;
    CHECK_OK(fli_pickle_load_memory(b.p, b.n, "shared.pickle", 0, &doc));
    fli_trace t;
    fli_snapshot_info info;
    CHECK_OK(fli_snapshot_to_trace(doc, NULL, 0, &t, &info));
    CHECK_EQ_U64(info.n_synth_live, 20 * 50);
    CHECK_EQ_U64(t.n, 20 * 50);
    fli_trace_free(&t);
    fli_pickle_free(doc);
    free(b.p);
}

int main(void)
{
    test_small_sharing_converts();
    test_expansion_refused();
    return fl_test_done("test_hostile_pickle");
}
