/* Issue 15, item 7: arithmetic on sizes from the command line and from files never
 * divides by zero or wraps:
 *   - --granularity 0 with --capacity 1.05x divided by zero (SIGFPE) in compare, replay,
 *     doctor and report;
 *   - --capacity 8x of a trace with 2^62 live bytes overflowed the float-to-u64
 *     conversion and ran at "2.00 MiB";
 *   - a snapshot's segments whose total_size add up past 2^64 made a doctor diagnosis
 *     at 4 MiB ("Capacity from the snapshot's oom event: 4.00 MiB reserved");
 *   - a state region of 2^64-1 bytes was drawn as "0 pages". */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "test_support.h"

static char dir[64];

static void test_granularity(void)
{
    static const char *const cmds[] = {"compare", "replay", "doctor", "report"};
    for (int i = 0; i < 4; i++) {
        fl_run_result *r = fl_test_run("cd '%s' && '%s' %s examples/encoder_varlen.csv --granularity 0 --capacity 1.05x%s",
                               FL_SOURCE_DIR, FL_CLI, cmds[i], i == 3 ? " -o /dev/null" : "");
        if (r->code != 1)
            fprintf(stderr, "%s --granularity 0: exit %d: %s\n", cmds[i], r->code, r->err);
        CHECK_EQ_U64(r->code, 1);
        CHECK(strstr(r->err, "--granularity '0': expected a power of two") != NULL);
    }
    /* 3 KiB is no power of two; 1 TiB passes what a sim device takes. */
    fl_run_result *r = fl_test_run("cd '%s' && '%s' replay examples/encoder_varlen.csv --granularity 3KiB", FL_SOURCE_DIR,
                           FL_CLI);
    CHECK_EQ_U64(r->code, 1);
    r = fl_test_run("cd '%s' && '%s' replay examples/encoder_varlen.csv --granularity 4KiB --capacity 1.05x", FL_SOURCE_DIR,
            FL_CLI);
    CHECK(r->code == 0 || r->code == 3);
}

/* One allocation of 2^62 bytes: 8x of it is 2^65. */
static void test_capacity_factor_overflow(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/huge.csv", dir);
    const char text[] = "Thread,Time,Action,Pointer,Size,Stream\n"
                        "0,00:00:00.000001,allocate,0x1000,4611686018427387904,0\n"
                        "0,00:00:00.000002,free,0x1000,4611686018427387904,0\n";
    fl_test_write_file(path, text, sizeof text - 1);
    static const char *const cmds[] = {"compare", "replay", "doctor", "report"};
    for (int i = 0; i < 4; i++) {
        fl_run_result *r = fl_test_run("'%s' %s '%s' --capacity 8x --no-min-capacity%s 2>&1", FL_CLI, cmds[i], path,
                               i == 3 ? " -o /dev/null" : "");
        if (i != 0) /* --no-min-capacity is compare's */
            r = fl_test_run("'%s' %s '%s' --capacity 8x%s", FL_CLI, cmds[i], path, i == 3 ? " -o /dev/null" : "");
        if (r->code != 1)
            fprintf(stderr, "%s --capacity 8x: exit %d: %s%s\n", cmds[i], r->code, r->out, r->err);
        CHECK_EQ_U64(r->code, 1);
        CHECK(strstr(r->out, "2.00 MiB") == NULL);
        CHECK(strstr(r->err, "--capacity 8x: 8 x peak live") != NULL || strstr(r->out, "--capacity 8x: 8 x peak live"));
    }
    unlink(path);
}

/* ---- a snapshot whose segments' total_size add up past 2^64 ------------------------- */

typedef struct buf {
    unsigned char p[4096];
    size_t n;
} buf;
static void put(buf *b, const void *d, size_t n)
{
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void str(buf *b, const char *s)
{
    uint32_t n = (uint32_t)strlen(s);
    put(b, "X", 1);
    put(b, &n, 4);
    put(b, s, n);
}
static void pk_uint(buf *b, uint64_t v) /* LONG1, 9 bytes: any u64 as a positive int */
{
    put(b, "\x8a\x09", 2);
    put(b, &v, 8);
    put(b, "\0", 1);
}

static void test_segments_sum(void)
{
    buf b = {.n = 0};
    put(&b, "\x80\x02}(", 4);
    str(&b, "device_traces");
    put(&b, "](](}(", 6); /* [[ {alloc}, {oom} ]] */
    str(&b, "action");
    str(&b, "alloc");
    str(&b, "addr");
    pk_uint(&b, 1 << 20);
    str(&b, "size");
    pk_uint(&b, 1 << 20);
    str(&b, "stream");
    pk_uint(&b, 0);
    put(&b, "u}(", 3);
    str(&b, "action");
    str(&b, "oom");
    str(&b, "size");
    pk_uint(&b, 8 << 20);
    str(&b, "stream");
    pk_uint(&b, 0);
    str(&b, "device_free");
    pk_uint(&b, 0);
    put(&b, "uee", 3); /* the dict, APPENDS, APPENDS (both lists) */
    str(&b, "segments");
    put(&b, "](", 2);
    /* ints are int64 in a pickle reader: 2 x (2^63 - 1) + 2 + 4 MiB = 2^64 + 4 MiB */
    const uint64_t sizes[3] = {INT64_MAX, INT64_MAX, 2 + (4 << 20)};
    for (int i = 0; i < 3; i++) {
        put(&b, "}(", 2);
        str(&b, "address");
        pk_uint(&b, (uint64_t)(i + 1) << 40);
        str(&b, "total_size");
        pk_uint(&b, sizes[i]);
        str(&b, "stream");
        pk_uint(&b, 0);
        str(&b, "blocks");
        put(&b, "]u", 2);
    }
    put(&b, "eu.", 3);
    char path[128];
    snprintf(path, sizeof path, "%s/wrap.pickle", dir);
    fl_test_write_file(path, b.p, b.n);
    fl_run_result *r = fl_test_run("'%s' doctor '%s'", FL_CLI, path);
    if (r->code != 2 || !strstr(r->err, "2^64"))
        fprintf(stderr, "doctor: exit %d\n%s%s\n", r->code, r->out, r->err);
    CHECK_EQ_U64(r->code, 2);
    CHECK(strstr(r->out, "Capacity from the snapshot's oom event: 4.00 MiB") == NULL);
    CHECK(strstr(r->err, "total_size") != NULL && strstr(r->err, "2^64") != NULL);
    unlink(path);
}

/* A region of 2^64-1 bytes spans 2^43 pages: refused as too large to draw, never "0". */
static void test_huge_region(void)
{
    char path[128], out[160];
    snprintf(path, sizeof path, "%s/huge.json", dir);
    snprintf(out, sizeof out, "%s/huge.html", dir);
    const char text[] = "{\"format\":\"fragless-state\",\"version\":1,\"policy\":\"fragless\",\"granularity\":2097152,"
                        "\"capacity\":0,\"regions\":[{\"kind\":\"heap\",\"addr\":\"0x0\",\"size\":18446744073709551615}]}";
    fl_test_write_file(path, text, sizeof text - 1);
    fl_run_result *r = fl_test_run("'%s' report '%s' -o '%s'", FL_CLI, path, out);
    CHECK_EQ_U64(r->code, 2);
    CHECK(strstr(r->err, "span 8796093022208 pages") != NULL);
    CHECK(access(out, F_OK) != 0);
    unlink(path);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/fl_sizes.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_granularity();
    test_capacity_factor_overflow();
    test_segments_sum();
    test_huge_region();
    fl_test_run("rm -rf '%s'", dir);
    return fl_test_done("test_hostile_sizes");
}
