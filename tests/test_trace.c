/* The RMM CSV reader and writer: round trips, every strictness rule with the exact file
 * and line in its message, tolerated problems as warnings, and the shared traces. */
#include "test_support.h"

#include "trace/trace.h"

#include <dirent.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- temp files ---------------------------------------------------------------- */

static char tmp_path[64];

/* Writes n bytes into a fresh mkstemp file; returns its path (in tmp_path). */
static const char *tmp_write(const char *data, size_t n)
{
    snprintf(tmp_path, sizeof tmp_path, "/tmp/fl_test_trace_XXXXXX");
    int fd = mkstemp(tmp_path);
    if (fd < 0) {
        perror("mkstemp");
        exit(1);
    }
    FILE *f = fdopen(fd, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        perror("write temp file");
        exit(1);
    }
    return tmp_path;
}

static const char *tmp_text(const char *text) { return tmp_write(text, strlen(text)); }

static void tmp_remove(void) { unlink(tmp_path); }

#define HDR "Thread,Time,Action,Pointer,Size,Stream\n"
#define ROW_A "1,00:00:00.000001,allocate,0x1000,4096,0\n"
#define ROW_F "1,00:00:00.000002,free,0x1000,4096,0\n"

/* ---- round trip ------------------------------------------------------------------ */

static void test_round_trip(void)
{
    fl_rng rng = {0x1234567};
    fli_trace t;
    fli_trace_init(&t, "");
    /* 40k rows (~2 MB) cross many read-chunk boundaries. */
    for (int i = 0; i < 40000; i++) {
        fli_event e = {0};
        e.kind = (uint8_t)fl_rng_below(&rng, 3);
        e.thread = fl_rng_below(&rng, 4) ? fl_rng_below(&rng, 100000) : fl_rng_next(&rng);
        e.time_us = fl_rng_below(&rng, 8) ? fl_rng_below(&rng, UINT64_C(100) * 3600000000)
                                          : fl_rng_next(&rng);
        e.ptr = e.kind == FL_EV_ALLOC_FAIL ? 0 : fl_rng_next(&rng) >> fl_rng_below(&rng, 64);
        e.size = 1 + (fl_rng_next(&rng) >> fl_rng_below(&rng, 64));
        if (e.kind == FL_EV_FREE && fl_rng_below(&rng, 10) == 0)
            e.size = 0;
        e.stream = fl_rng_below(&rng, 2) ? 0 : fl_rng_next(&rng) >> fl_rng_below(&rng, 64);
        CHECK_OK(fli_trace_push(&t, &e));
    }
    fli_event extremes[] = {
        {.time_us = UINT64_MAX, .ptr = UINT64_MAX, .size = UINT64_MAX, .stream = UINT64_MAX,
         .thread = UINT64_MAX, .kind = FL_EV_ALLOC},
        {.time_us = 0, .ptr = 0, .size = 0, .stream = 0, .thread = 0, .kind = FL_EV_FREE},
    };
    for (size_t i = 0; i < 2; i++)
        CHECK_OK(fli_trace_push(&t, &extremes[i]));

    const char *path = tmp_text("");
    CHECK_OK(fli_trace_write_csv(path, &t));
    fli_trace r;
    CHECK_OK(fli_trace_read_csv(path, &r));
    CHECK_EQ_U64(r.n, t.n);
    CHECK_EQ_U64(r.n_warnings, 0);
    CHECK(strcmp(r.path, path) == 0);
    size_t bad = 0;
    for (size_t i = 0; i < t.n && i < r.n; i++) {
        const fli_event *a = &t.ev[i], *b = &r.ev[i];
        if (a->time_us != b->time_us || a->ptr != b->ptr || a->size != b->size ||
            a->stream != b->stream || a->thread != b->thread || a->kind != b->kind ||
            b->line != i + 2)
            bad++;
    }
    CHECK_EQ_U64(bad, 0);
    fli_trace_free(&r);
    tmp_remove();
    fli_trace_free(&t);

    /* The exact row text the writer produces. */
    char row[192];
    fli_event e = {.time_us = UINT64_C(3723) * 1000000 + 42, .ptr = 0x10012400000, .size = 1048576,
                  .stream = 0xab, .thread = 2342727, .kind = FL_EV_ALLOC};
    int len = fli_trace_format_row(row, sizeof row, &e);
    CHECK(strcmp(row, "2342727,01:02:03.000042,allocate,0x10012400000,1048576,ab") == 0);
    CHECK_EQ_U64(len, strlen(row));
    e.time_us = UINT64_C(100) * 3600000000 + 1; /* hours past 99 get more digits */
    e.kind = FL_EV_ALLOC_FAIL;
    fli_trace_format_row(row, sizeof row, &e);
    CHECK(strcmp(row, "2342727,100:00:00.000001,allocate failure,0x0,1048576,ab") == 0);
    e.kind = 9;
    CHECK(fli_trace_format_row(row, sizeof row, &e) < 0);
}

/* ---- errors ---------------------------------------------------------------------- */

typedef struct bad_case {
    const char *text;
    int line;
    const char *want;   /* a fragment the message must contain (column and offending text) */
} bad_case;

static void test_errors(void)
{
    static const bad_case cases[] = {
        {"Thread,Time,Action,Pointer,Size\n" ROW_A, 1, "header 'Thread,Time,Action,Pointer,Size'"},
        {"thread,time,action,pointer,size,stream\n", 1, "is not 'Thread,Time"},
        {"\xef\xbb\xbf" HDR ROW_A, 1, "byte-order mark"},
        {"\n" HDR, 1, "empty line"},
        {HDR ROW_A "1,00:00:00.000003,allocate,0x2000,abc,0\n", 3, "column Size: 'abc' is not a decimal number"},
        {HDR ROW_A "1,00:00:00.000003,allocate,0x2000,-5,0\n", 3, "column Size: '-5'"},
        {HDR ROW_A "1,00:00:00.000003,allocate,0x2000,0,0\n", 3, "column Size: '0' must be more than 0"},
        {HDR "1,00:00:00.000003,allocate failure,0x0,0,0\n", 2, "column Size: '0'"},
        {HDR ROW_A "1,00:00:00.000003,allocate,0x2000,99999999999999999999,0\n", 3, "column Size: '99999999999999999999' does not fit"},
        {HDR "x1,00:00:00.000003,allocate,0x2000,16,0\n", 2, "column Thread: 'x1' is not a decimal number"},
        {HDR ",00:00:00.000003,allocate,0x2000,16,0\n", 2, "column Thread: ''"},
        {HDR "1,0:00:00.000003,allocate,0x2000,16,0\n", 2, "column Time: '0:00:00.000003'"},
        {HDR "1,00:60:00.000003,allocate,0x2000,16,0\n", 2, "column Time: '00:60:00.000003' has minutes or seconds"},
        {HDR "1,00:00:61.000003,allocate,0x2000,16,0\n", 2, "column Time: '00:00:61.000003'"},
        {HDR "1,00:00:01,allocate,0x2000,16,0\n", 2, "column Time: '00:00:01' is not a time"},
        {HDR "1,00:00:01.,allocate,0x2000,16,0\n", 2, "column Time: '00:00:01.' needs 1 to 9 digits"},
        {HDR "1,00:00:01.0123456789,allocate,0x2000,16,0\n", 2, "column Time: '00:00:01.0123456789'"},
        {HDR "1,00:00:01.01a,allocate,0x2000,16,0\n", 2, "column Time: '00:00:01.01a'"},
        {HDR "1,99999999999:00:01.01,allocate,0x2000,16,0\n", 2, "column Time: '99999999999:00:01.01' does not fit"},
        {HDR "1,00:00:01.000001,alloc,0x2000,16,0\n", 2, "column Action: 'alloc' is not allocate"},
        {HDR "1,00:00:01.000001,Allocate,0x2000,16,0\n", 2, "column Action: 'Allocate'"},
        {HDR "1,00:00:01.000001,allocate,2000,16,0\n", 2, "column Pointer: '2000' is not a hex number starting with 0x"},
        {HDR "1,00:00:01.000001,allocate,0x,16,0\n", 2, "column Pointer: '0x'"},
        {HDR "1,00:00:01.000001,allocate,0xfg,16,0\n", 2, "column Pointer: '0xfg'"},
        {HDR "1,00:00:01.000001,allocate,0X20,16,0\n", 2, "column Pointer: '0X20'"},
        {HDR "1,00:00:01.000001,allocate,0x10000000000000000,16,0\n", 2, "column Pointer: '0x10000000000000000' does not fit"},
        {HDR "1,00:00:01.000001,free,(nil),16,0\n", 2, "column Pointer: '(nil)'"},
        {HDR "1,00:00:01.000001,allocate failure,0x20,16,0\n", 2, "column Pointer: '0x20' must be null"},
        {HDR "1,00:00:01.000001,allocate,0x20,16,\n", 2, "column Stream: '' is not a hex number"},
        {HDR "1,00:00:01.000001,allocate,0x20,16,zz\n", 2, "column Stream: 'zz'"},
        {HDR "1,00:00:01.000001,allocate,0x20,16,0 \n", 2, "column Stream: '0 '"},
        {HDR "1,00:00:01.000001,allocate,0x20,16,0\r0\n", 2, "column Stream: '0\\x0d0'"},
        {HDR "1,00:00:01.000001,allocate,0x20,16\n" ROW_A, 2, "expected 6 columns"},
        {HDR "1,00:00:01.000001,allocate,0x20,16,0,7\n", 2, "found 7"},
        {HDR ROW_A "\n" ROW_F, 3, "empty line"},
        {HDR ROW_A "\r\n" ROW_F, 3, "empty line"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        const char *path = tmp_text(c->text);
        fli_trace t;
        fl_status s = fli_trace_read_csv(path, &t);
        char where[96];
        snprintf(where, sizeof where, "%s:%d: ", path, c->line);
        const char *msg = fl_last_error();
        int ok = s == FL_ERR_PARSE && strstr(msg, where) == msg && strstr(msg, c->want);
        CHECK(ok);
        if (!ok)
            fprintf(stderr, "  case %zu: status %s, message '%s', want '%s' and '%s'\n", i,
                    fl_status_str(s), msg, where, c->want);
        CHECK(t.n == 0 && t.ev == NULL && t.warnings == NULL && t.path == NULL);
        fli_trace_free(&t);
        tmp_remove();
    }
}

/* Errors deep in a big file carry the right line number (past several read chunks). */
static void test_error_far_down(void)
{
    size_t rows = 30000, bad_row = 25000;
    char *text = malloc(rows * 64 + 64);
    size_t o = (size_t)sprintf(text, HDR);
    for (size_t i = 0; i < rows; i++)
        o += (size_t)sprintf(text + o, "7,00:00:01.%06zu,allocate,0x%zx,%s,0\n", i, i + 1,
                             i == bad_row ? "12x" : "512");
    const char *path = tmp_write(text, o);
    fli_trace t;
    CHECK_STATUS(fli_trace_read_csv(path, &t), FL_ERR_PARSE);
    char want[128];
    snprintf(want, sizeof want, "%s:%zu: column Size: '12x'", path, bad_row + 2);
    CHECK(strstr(fl_last_error(), want) != NULL);
    CHECK(t.n == 0);
    fli_trace_free(&t);
    tmp_remove();
    free(text);
}

static void test_long_and_nul(void)
{
    /* A line over the limit, in the middle and as the last line. */
    for (int last = 0; last < 2; last++) {
        size_t n = 10000;
        char *text = malloc(n + 256);
        size_t o = (size_t)sprintf(text, HDR ROW_A "1,00:00:00.000003,allocate,0x2000,");
        memset(text + o, '1', n);
        o += n;
        o += (size_t)sprintf(text + o, ",0\n%s", last ? "" : ROW_F);
        const char *path = tmp_write(text, o);
        fli_trace t;
        CHECK_STATUS(fli_trace_read_csv(path, &t), FL_ERR_PARSE);
        char want[96];
        snprintf(want, sizeof want, "%s:3: line is longer than", path);
        CHECK(strstr(fl_last_error(), want) != NULL);
        fli_trace_free(&t);
        tmp_remove();
        free(text);
    }
    /* An embedded NUL in a terminated line is an error. */
    static const char nul_text[] = HDR ROW_A "1,00:00:00.0\0000003,allocate,0x2000,16,0\n" ROW_F;
    const char *path = tmp_write(nul_text, sizeof nul_text - 1);
    fli_trace t;
    CHECK_STATUS(fli_trace_read_csv(path, &t), FL_ERR_PARSE);
    char want[96];
    snprintf(want, sizeof want, "%s:3: NUL byte at column 13", path);
    CHECK(strstr(fl_last_error(), want) != NULL);
    fli_trace_free(&t);
    tmp_remove();
}

/* ---- tolerated input --------------------------------------------------------------- */

static fl_status read_text(const char *text, size_t n, fli_trace *t)
{
    const char *path = tmp_write(text, n);
    fl_status s = fli_trace_read_csv(path, t);
    tmp_remove();
    return s;
}
#define READ_TEXT(lit, t) read_text(lit, sizeof lit - 1, t)

static void test_truncated_last_line(void)
{
    static const char *const cuts[] = {
        HDR ROW_A ROW_F "1,00:00:00.000003,allocate,0x3000,40",      /* missing column */
        HDR ROW_A ROW_F "1,00:00:00.0000",                            /* cut in Time */
        HDR ROW_A ROW_F "1,00:00:00.000003,alloc",                    /* cut in Action */
        HDR ROW_A ROW_F "1,00:00:00.000003,allocate,0x3000,40,",      /* empty Stream */
    };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        fli_trace t;
        CHECK_OK(read_text(cuts[i], strlen(cuts[i]), &t));
        CHECK_EQ_U64(t.n, 2);
        CHECK_EQ_U64(t.n_warnings, 1);
        if (t.n_warnings == 1) {
            CHECK(strstr(t.warnings[0], ":4: last line is incomplete (") != NULL);
            CHECK(strstr(t.warnings[0], "), ignored") != NULL);
            CHECK(strncmp(t.warnings[0], "/tmp/fl_test_trace_", 19) == 0);
        }
        fli_trace_free(&t);
    }
    /* A zero-filled tail after a crash. */
    static const char zeros[] = HDR ROW_A "1,00:00:00.00\0\0\0\0\0\0\0";
    fli_trace t;
    CHECK_OK(READ_TEXT(zeros, &t));
    CHECK_EQ_U64(t.n, 1);
    CHECK_EQ_U64(t.n_warnings, 1);
    fli_trace_free(&t);
    /* A complete last line without newline is kept, with a warning (its last field may
     * have been cut). */
    CHECK_OK(READ_TEXT(HDR ROW_A "1,00:00:00.000002,free,0x1000,4096,0", &t));
    CHECK_EQ_U64(t.n, 2);
    CHECK_EQ_U64(t.n_warnings, 1);
    CHECK(t.n_warnings == 1 && strstr(t.warnings[0], "no newline") != NULL);
    fli_trace_free(&t);
    /* A header cut short is an empty trace with a warning; something else is an error. */
    CHECK_OK(READ_TEXT("Thread,Time,Act", &t));
    CHECK_EQ_U64(t.n, 0);
    CHECK_EQ_U64(t.n_warnings, 1);
    fli_trace_free(&t);
    CHECK_STATUS(READ_TEXT("hello", &t), FL_ERR_PARSE);
    CHECK(strstr(fl_last_error(), ":1: header 'hello'") != NULL);
    fli_trace_free(&t);
}

static void test_tolerated(void)
{
    fli_trace t;
    /* Empty file and header only: valid empty traces. */
    CHECK_OK(READ_TEXT("", &t));
    CHECK_EQ_U64(t.n, 0);
    CHECK_EQ_U64(t.n_warnings, 0);
    fli_trace_free(&t);
    CHECK_OK(READ_TEXT(HDR, &t));
    CHECK_EQ_U64(t.n, 0);
    fli_trace_free(&t);
    CHECK_OK(READ_TEXT("Thread,Time,Action,Pointer,Size,Stream", &t));
    CHECK_EQ_U64(t.n, 0);
    CHECK_EQ_U64(t.n_warnings, 0);
    fli_trace_free(&t);

    /* CRLF line endings, including the header. */
    CHECK_OK(READ_TEXT("Thread,Time,Action,Pointer,Size,Stream\r\n"
                       "3,00:00:00.000001,allocate,0x1000,4096,0\r\n"
                       "3,00:00:00.000002,free,0x1000,4096,0\r\n",
                       &t));
    CHECK_EQ_U64(t.n, 2);
    if (t.n == 2) {
        CHECK_EQ_U64(t.ev[1].stream, 0);
        CHECK_EQ_U64(t.ev[1].line, 3);
        CHECK_EQ_U64(t.ev[1].kind, FL_EV_FREE);
    }
    fli_trace_free(&t);

    /* Trailing empty lines: one warning naming the first of them. */
    CHECK_OK(READ_TEXT(HDR ROW_A ROW_F "\n\r\n\n", &t));
    CHECK_EQ_U64(t.n, 2);
    CHECK_EQ_U64(t.n_warnings, 1);
    if (t.n_warnings == 1)
        CHECK(strstr(t.warnings[0], ":4: 3 empty lines at the end of the file, ignored") != NULL);
    fli_trace_free(&t);

    /* allocate failure rows with every spelling of null; free of size 0; 0x stream. */
    CHECK_OK(READ_TEXT(HDR "5,00:00:00.000001,allocate failure,0x0,100,0\n"
                           "5,00:00:00.000002,allocate failure,0,200,0\n"
                           "5,00:00:00.000003,allocate failure,(nil),300,0\n"
                           "5,00:00:00.000004,allocate failure,,400,0\n"
                           "5,00:00:00.000005,allocate failure,0x0000,500,0\n"
                           "5,00:00:00.000006,free,0xABCdef,0,0x1f\n"
                           "5,123:59:59.5,allocate,0x10,7,DeadBeef\n"
                           "5,00:00:00.123456789,free,0x10,7,0\n",
                       &t));
    CHECK_EQ_U64(t.n, 8);
    if (t.n == 8) {
        for (int i = 0; i < 5; i++) {
            CHECK_EQ_U64(t.ev[i].kind, FL_EV_ALLOC_FAIL);
            CHECK_EQ_U64(t.ev[i].ptr, 0);
            CHECK_EQ_U64(t.ev[i].size, 100 * (i + 1));
            CHECK_EQ_U64(t.ev[i].time_us, i + 1);
            CHECK_EQ_U64(t.ev[i].thread, 5);
        }
        CHECK_EQ_U64(t.ev[5].ptr, 0xabcdef);
        CHECK_EQ_U64(t.ev[5].size, 0);
        CHECK_EQ_U64(t.ev[5].stream, 0x1f);
        CHECK_EQ_U64(t.ev[6].time_us, (UINT64_C(123) * 3600 + 59 * 60 + 59) * 1000000 + 500000);
        CHECK_EQ_U64(t.ev[6].stream, 0xdeadbeef);
        CHECK_EQ_U64(t.ev[7].time_us, 123456);
    }
    fli_trace_free(&t);

    /* The stream entry point names the stream in its messages. */
    static const char text[] = HDR ROW_A "1,00:00:00.000003,allocate,0x2000,abc,0\n";
    FILE *f = fmemopen((void *)text, sizeof text - 1, "r");
    CHECK(f != NULL);
    if (f) {
        CHECK_STATUS(fli_trace_read_csv_stream(f, "piped", &t), FL_ERR_PARSE);
        CHECK(strncmp(fl_last_error(), "piped:3: column Size: 'abc'", 27) == 0);
        fclose(f);
    }
}

static void test_io_errors(void)
{
    fli_trace t;
    CHECK_STATUS(fli_trace_read_csv("/nonexistent/dir/trace.csv", &t), FL_ERR_IO);
    CHECK(strstr(fl_last_error(), "/nonexistent/dir/trace.csv") != NULL);
    CHECK(strstr(fl_last_error(), "No such file") != NULL);
    CHECK(t.n == 0 && t.ev == NULL);
    fli_trace_free(&t);
    CHECK_STATUS(fli_trace_read_csv("/tmp", &t), FL_ERR_IO);
    fli_trace_free(&t);

    fli_trace_init(&t, "mem");
    CHECK_STATUS(fli_trace_write_csv("/nonexistent/dir/out.csv", &t), FL_ERR_IO);
    CHECK(strstr(fl_last_error(), "/nonexistent/dir/out.csv") != NULL);
    fli_event e = {.kind = 7, .size = 1};
    CHECK_OK(fli_trace_push(&t, &e));
    FILE *f = fopen("/dev/null", "w");
    if (f) {
        CHECK_STATUS(fli_trace_write_csv_stream(f, &t), FL_ERR_INVALID);
        fclose(f);
    }
    CHECK_OK(fli_trace_warn(&t, "note %d", 42));
    CHECK(t.n_warnings == 1 && strcmp(t.warnings[0], "note 42") == 0);
    fli_trace_free(&t);
}

/* ---- shared traces ------------------------------------------------------------------ */

static size_t count_newlines(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    char buf[65536];
    size_t n, lines = 0;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < n; i++)
            lines += buf[i] == '\n';
    fclose(f);
    return lines;
}

static void test_shared_traces(void)
{
    const char *dir = fl_test_shared_traces();
    if (!dir)
        return;
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    if (!d)
        return;
    int files = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 4, ".csv") != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        fli_trace t;
        uint64_t t0 = fli_now_ns();
        fl_status s = fli_trace_read_csv(path, &t);
        double ms = (double)(fli_now_ns() - t0) / 1e6;
        CHECK_OK(s);
        size_t want = count_newlines(path) - 1;
        CHECK_EQ_U64(t.n, want);
        CHECK_EQ_U64(t.n_warnings, 0);
        printf("  %s: %zu events in %.1f ms\n", de->d_name, t.n, ms);
        fli_trace_free(&t);
        files++;
    }
    closedir(d);
    CHECK(files > 0);
}

int main(void)
{
    test_round_trip();
    test_errors();
    test_error_far_down();
    test_long_and_nul();
    test_truncated_last_line();
    test_tolerated();
    test_io_errors();
    test_shared_traces();
    return fl_test_done("test_trace");
}
