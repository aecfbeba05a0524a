/* The fragless command line as a user meets it: help texts, exit codes, errors on
 * stderr naming file and line, the three output formats, and the replay figures of the
 * example trace against a golden file (tests/golden/, every column but host time). */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "test_support.h"

/* Runs the CLI with the arguments (a shell fragment) from the source directory. */
static fl_run_result *run(const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s", FL_SOURCE_DIR, FL_CLI, args);
    return fl_test_shell(cmd);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_help_and_usage(void)
{
    fl_run_result *r = run("--help");
    CHECK(r->code == 0 && strstr(r->out, "compare") && strstr(r->out, "exit codes"));
    r = run("help compare");
    CHECK(r->code == 0 && strstr(r->out, "min_capacity") && strstr(r->out, "--capacity"));
    r = run("replay --help");
    CHECK(r->code == 0 && strstr(r->out, "--timeline"));
    r = run("version");
    CHECK(r->code == 0 && strstr(r->out, "fragless "));
    r = run("");
    CHECK_EQ_U64(r->code, 1);
    r = run("frobnicate");
    CHECK(r->code == 1 && strstr(r->err, "unknown command 'frobnicate'"));
    r = run("compare");
    CHECK(r->code == 1 && strstr(r->err, "no trace given"));
    r = run("compare examples/encoder_varlen.csv --capacity lots");
    CHECK(r->code == 1 && strstr(r->err, "lots"));
    r = run("compare examples/encoder_varlen.csv --policies fragless,magic");
    CHECK(r->code == 1 && strstr(r->err, "unknown policy 'magic'"));
    r = run("compare examples/encoder_varlen.csv --conf max_split_size_mb:5");
    CHECK(r->code == 1 && strstr(r->err, "max_split_size_mb"));
    r = run("compare examples/encoder_varlen.csv --format xml");
    CHECK(r->code == 1 && strstr(r->err, "xml"));
    r = run("replay examples/encoder_varlen.csv --bogus");
    CHECK(r->code == 1 && strstr(r->err, "--bogus"));
    CHECK(r->out[0] == 0); /* errors go to stderr only */
}

static void test_bad_traces(void)
{
    fl_run_result *r = run("compare /nonexistent/trace.csv");
    CHECK(r->code == 2 && strstr(r->err, "/nonexistent/trace.csv"));
    char path[64];
    snprintf(path, sizeof path, "/tmp/fl_cli_bad.%d.csv", (int)getpid());
    write_file(path, "Thread,Time,Action,Pointer,Size,Stream\n"
                     "1,00:00:00.000001,allocate,0x10,512,0\n"
                     "1,00:00:00.000002,allocate,0x20,abc,0\n");
    r = run("compare %s", path);
    CHECK(r->code == 2 && strstr(r->err, ":3:") && strstr(r->err, "abc"));
    /* A free of a pointer never allocated is reported and skipped; the run goes on. */
    write_file(path, "Thread,Time,Action,Pointer,Size,Stream\n"
                     "1,00:00:00.000001,allocate,0x10,4096,0\n"
                     "1,00:00:00.000002,free,0x99,512,0\n"
                     "1,00:00:00.000003,free,0x10,4096,0\n");
    r = run("replay %s", path);
    CHECK(r->code == 0 && strstr(r->err, ":3:") && strstr(r->err, "0x99"));
    CHECK(strstr(r->out, "1 unknown frees skipped") != NULL);
    unlink(path);
}

static void test_formats(void)
{
    fl_run_result *r = run("compare examples/encoder_varlen.csv --policies fragless,cca --no-min-capacity --format json");
    CHECK(r->code == 0 && r->out[0] == '[' && strstr(r->out, "\"policy\": \"cca\"") && strstr(r->out, "]\n"));
    r = run("replay examples/encoder_varlen.csv --format json --timeline 4");
    CHECK(r->code == 0 && strstr(r->out, "\"timeline\": [{") && strstr(r->out, "\"calls_by_kind\""));
    r = run("replay examples/encoder_varlen.csv --timeline 5");
    CHECK(r->code == 0 && strstr(r->out, "<- peak live") && strstr(r->out, "timeline"));
    /* Out of memory at --capacity is exit code 3, and says where. */
    r = run("replay examples/encoder_varlen.csv --policy cca --capacity 100MiB");
    CHECK(r->code == 3 && strstr(r->out, "first at event"));
    r = run("compare examples/encoder_varlen.csv --capacity 100MiB --policies nocache --no-min-capacity");
    CHECK(r->code == 0 && strstr(r->out, "at capacity 100.00 MiB"));
}

/* Every column must match the golden file (compare prints no host time): any change in a
 * policy's behaviour shows up here, and the golden file is regenerated on purpose (README). */
static void test_golden(void)
{
    fl_run_result *r = run("compare examples/encoder_varlen.csv --capacity 1.05x --format csv");
    CHECK_EQ_U64(r->code, 0);
    static char golden[1 << 16];
    fl_test_slurp(FL_SOURCE_DIR "/tests/golden/encoder_varlen.csv", golden, sizeof golden);
    CHECK(golden[0] != 0);
    if (strcmp(r->out, golden) != 0) {
        CHECK(!"compare output differs from tests/golden/encoder_varlen.csv");
        fprintf(stderr, "got:\n%s\nwant:\n%s\n", r->out, golden);
    }
}

/* The doctor's text on the example trace, whole: it has no timings, so any change in a
 * policy or in the diagnosis shows here. Plus its errors and the JSON form. */
static void test_doctor(void)
{
    fl_run_result *r = run("doctor examples/encoder_varlen.csv --capacity 320MiB");
    CHECK_EQ_U64(r->code, 0);
    static char golden[1 << 16];
    fl_test_slurp(FL_SOURCE_DIR "/tests/golden/encoder_varlen.doctor.txt", golden, sizeof golden);
    CHECK(golden[0] != 0);
    if (strcmp(r->out, golden) != 0) {
        CHECK(!"doctor output differs from tests/golden/encoder_varlen.doctor.txt");
        fprintf(stderr, "got:\n%s\nwant:\n%s\n", r->out, golden);
    }
    r = run("doctor examples/encoder_varlen.csv --capacity 320MiB --format json");
    CHECK(r->code == 0 && strstr(r->out, "\"verdict\": \"fragmentation\"") && strstr(r->out, "\"whatif\": [{"));
    r = run("doctor examples/encoder_varlen.csv --format csv");
    CHECK(r->code == 1 && strstr(r->err, "text or json"));
    r = run("doctor examples/encoder_varlen.csv --policy nope");
    CHECK(r->code == 1 && strstr(r->err, "nope"));
    r = run("doctor examples/encoder_varlen.csv examples/encoder_varlen.csv");
    CHECK(r->code == 1 && strstr(r->err, "one trace"));
    r = run("doctor examples/encoder_varlen.csv");
    CHECK(r->code == 0 && strstr(r->out, "No capacity given"));
}

int main(void)
{
    test_help_and_usage();
    test_bad_traces();
    test_formats();
    test_golden();
    test_doctor();
    return fl_test_done("test_cli");
}
