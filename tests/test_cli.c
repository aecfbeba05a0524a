/* The fragless command line as a user meets it: help texts, exit codes, errors on
 * stderr naming file and line, the three output formats, and the replay figures of the
 * example trace against a golden file (tests/golden/, every column but host time). */
#include <stdarg.h>
#include <stdlib.h>
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
    CHECK(strstr(r->out, "1 unknown free skipped") != NULL); /* one, not "1 unknown frees" */
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
    /* The streams' floor: a line where several streams' peaks in the steady state add up to
     * more than peak live (fsdp's all-gather stream), none for one stream. */
    CHECK(!strstr(r->out, "streams' floor"));
    r = run("compare examples/fsdp/fsdp.rank1.csv --policies nocache --no-min-capacity");
    const char *fl = strstr(r->out, "streams' floor ");
    double ratio = 0;
    CHECK(r->code == 0 && fl && sscanf(strstr(fl, "(") ? strstr(fl, "(") : "", "(%lfx peak live)", &ratio) == 1);
    CHECK(ratio > 1.05 && strstr(r->out, "from event 5187 on"));
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

    /* A job whose streams hold more than the capacity between them in the steady state:
     * the doctor says so, with the floor compare prints and the device calls made there;
     * not at a capacity above the floor, nor for one stream (the golden text above). */
    r = run("compare examples/fsdp/fsdp.rank1.csv --policy fragless --no-min-capacity --format csv");
    const char *last = r->code == 0 ? strrchr(r->out, ',') : NULL;
    unsigned long long floor = last ? strtoull(last + 1, NULL, 10) : 0, jfloor = 0, calls = 0;
    CHECK(floor > 0);
    r = run("doctor examples/fsdp/fsdp.rank1.csv --policy fragless --capacity 3.46GiB --format json");
    const char *f = strstr(r->out, "\"streams_floor\": "), *c = strstr(r->out, "\"steady_device_calls\": ");
    CHECK(r->code == 0 && f && sscanf(f, "\"streams_floor\": %llu", &jfloor) == 1 && c &&
          sscanf(c, "\"steady_device_calls\": %llu", &calls) == 1);
    CHECK(jfloor == floor && calls > 0);
    r = run("doctor examples/fsdp/fsdp.rank1.csv --policy fragless --capacity 3.46GiB");
    CHECK(r->code == 0 && strstr(r->out, "the job fits") && strstr(r->out, "Its streams hold more than the capacity"));
    r = run("doctor examples/fsdp/fsdp.rank1.csv --policy fragless --capacity 4GiB");
    CHECK(r->code == 0 && strstr(r->out, "the job fits") && !strstr(r->out, "Its streams hold"));
}

/* One vocabulary across the commands (issue 16, point 5): --policy takes a list everywhere
 * (--policies is the same option), --format text|csv|json everywhere that prints results
 * (table is text), unknown help topics are errors, plurals agree, decimal sizes are
 * refused with the GiB figure they mean, report says what it wrote, and a torch.save
 * checkpoint is named as one. */
static void test_vocabulary(void)
{
    /* --policy with a list on compare; --policies on replay and doctor. */
    fl_run_result *r = run("compare examples/encoder_varlen.csv --policy fragless,nocache --no-min-capacity");
    CHECK(r->code == 0 && strstr(r->out, "  fragless ") && strstr(r->out, "  nocache ") && !strstr(r->out, "  cca "));
    r = run("replay examples/encoder_varlen.csv --policies nocache --format json");
    CHECK(r->code == 0 && strstr(r->out, "\"policy\": \"nocache\""));
    r = run("doctor examples/encoder_varlen.csv --policies cca --format json");
    CHECK(r->code == 0 && strstr(r->out, "\"ran\": \"cca\""));
    r = run("doctor examples/encoder_varlen.csv --policy fragless,cca");
    CHECK(r->code == 1 && strstr(r->err, "runs one policy") && strstr(r->err, "compare takes a list"));
    r = run("help compare");
    CHECK(r->code == 0 && strstr(r->out, "--policies is the same option") && strstr(r->out, "table is the same"));

    /* --format text everywhere, table as its old name; report has none, and says so. */
    r = run("compare examples/encoder_varlen.csv --policy nocache --no-min-capacity --format text");
    CHECK(r->code == 0 && strstr(r->out, "peak live"));
    fl_run_result *t = run("compare examples/encoder_varlen.csv --policy nocache --no-min-capacity --format table");
    CHECK(t->code == 0 && !strcmp(t->out, r->out));
    r = run("replay examples/encoder_varlen.csv --format text");
    CHECK(r->code == 0 && strstr(r->out, "peak reserved"));
    r = run("doctor examples/encoder_varlen.csv --format table");
    CHECK(r->code == 0 && strstr(r->out, "No capacity given"));
    r = run("report examples/encoder_varlen.csv -o /dev/null --format json");
    CHECK(r->code == 1 && strstr(r->err, "report has no --format") && strstr(r->err, "HTML"));

    /* Unknown help topics exit 1 and say so; known ones exit 0. */
    r = run("help nonsense");
    CHECK(r->code == 1 && strstr(r->err, "unknown command 'nonsense'") && r->out[0] == 0);
    r = run("--help nonsense");
    CHECK_EQ_U64(r->code, 1);
    r = run("help doctor");
    CHECK(r->code == 0 && strstr(r->out, "fragless doctor"));
    r = run("help fidelity");
    CHECK(r->code == 0 && strstr(r->out, "--format text|csv|json"));
    r = run("help version");
    CHECK_EQ_U64(r->code, 0);

    /* Plurals: the example trace has one stream. */
    r = run("compare examples/encoder_varlen.csv --policy nocache --no-min-capacity");
    CHECK(r->code == 0 && strstr(r->out, " 1 stream,") && !strstr(r->out, "1 streams"));
    r = run("replay examples/encoder_varlen.csv --policy cca --capacity 100MiB");
    CHECK(r->code == 3 && strstr(r->out, "0 recorded failures") && strstr(r->out, "0 unknown frees"));

    /* Decimal units are refused with the binary figure they mean, in --capacity and in
     * knobs; binary units and plain bytes are taken. */
    r = run("compare examples/encoder_varlen.csv --capacity 80GB");
    CHECK(r->code == 1 && strstr(r->err, "80GB is 74.51 GiB (decimal gigabytes") && strstr(r->err, "write 80GiB") &&
          strstr(r->err, "80e9"));
    r = run("replay examples/encoder_varlen.csv --capacity 512MB");
    CHECK(r->code == 1 && strstr(r->err, "488.28 MiB") && strstr(r->err, "512MiB"));
    r = run("replay examples/encoder_varlen.csv --conf limit:8GB");
    CHECK(r->code == 1 && strstr(r->err, "limit") && strstr(r->err, "7.45 GiB"));
    r = run("replay examples/encoder_varlen.csv --capacity 1e9 --policy nocache");
    CHECK(r->code == 0 && strstr(r->out, "capacity 953.67 MiB"));

    /* report says where it wrote. */
    char path[64], html[64];
    snprintf(html, sizeof html, "/tmp/fl_cli_report.%d.html", (int)getpid());
    r = run("report examples/encoder_varlen.csv -o %s --policy nocache", html);
    CHECK(r->code == 0 && strstr(r->out, "wrote ") && strstr(r->out, html));
    unlink(html);

    /* A torch.save checkpoint (a zip whose first member is ARCHIVE/data.pkl) is named as
     * one, with what to record instead; any zip is named as a zip. */
    snprintf(path, sizeof path, "/tmp/fl_cli_model.%d.pt", (int)getpid());
    unsigned char zip[30 + 14] = {'P', 'K', 3, 4, 20};
    zip[26] = 14;
    memcpy(zip + 30, "model/data.pkl", 14);
    FILE *f = fopen(path, "wb");
    fwrite(zip, 1, sizeof zip, f);
    fclose(f);
    r = run("doctor %s", path);
    CHECK(r->code == 2 && strstr(r->err, "a PyTorch checkpoint (torch.save zip), not a memory snapshot") &&
          strstr(r->err, "_dump_snapshot"));
    r = run("compare %s", path);
    CHECK(r->code == 2 && strstr(r->err, "torch.save zip") && !strstr(r->err, "NUL byte"));
    memcpy(zip + 30, "readme.txtxxxx", 14);
    f = fopen(path, "wb");
    fwrite(zip, 1, sizeof zip, f);
    fclose(f);
    r = run("replay %s", path);
    CHECK(r->code == 2 && strstr(r->err, "a zip archive"));

    /* fidelity and import on a one-allocation snapshot: --format json, one event. */
    /* {'device_traces': [[{'action': 'alloc', 'addr': 4096, 'size': 1024, 'stream': 0}]]} */
    static const char p[] = "\x80\x02}q\x00X\x0d\x00\x00\x00" "device_tracesq\x01]q\x02]q\x03}q\x04(X\x06\x00\x00"
                            "\x00" "actionq\x05X\x05\x00\x00\x00" "allocq\x06X\x04\x00\x00\x00" "addrq\x07M\x00\x10X"
                            "\x04\x00\x00\x00sizeq\x08M\x00\x04X\x06\x00\x00\x00streamq\tK\x00uaas.";
    snprintf(path, sizeof path, "/tmp/fl_cli_snap.%d.pickle", (int)getpid());
    f = fopen(path, "wb");
    fwrite(p, 1, sizeof p - 1, f);
    fclose(f);
    r = run("fidelity %s --format json", path);
    CHECK(r->code == 0 && r->out[0] == '[' && strstr(r->out, "\"policy\": \"cca\"") && strstr(r->out, "\"diff\": null"));
    r = run("fidelity %s --format table", path);
    CHECK(r->code == 0 && strstr(r->out, "recorded") && strstr(r->out, "sizes in GiB"));
    r = run("fidelity %s --format xml", path);
    CHECK(r->code == 1 && strstr(r->err, "expected text, csv or json"));
    snprintf(html, sizeof html, "/tmp/fl_cli_snap.%d.csv", (int)getpid());
    r = run("import %s -o %s", path, html);
    CHECK(r->code == 0 && strstr(r->err, "1 event from 1 entry") && strstr(r->err, "1 stream,") &&
          strstr(r->err, "0 segments"));
    unlink(html);
    unlink(path);
}

int main(void)
{
    test_help_and_usage();
    test_bad_traces();
    test_formats();
    test_golden();
    test_doctor();
    test_vocabulary();
    return fl_test_done("test_cli");
}
