/* Issue 15, item 10: what a file is, decided once (fli_input_detect) for every command,
 * with clear errors, and JSON output that is always JSON:
 *   - a 0-byte file passed compare, doctor and report with exit 0 and "inf" ratios;
 *   - a snapshot with no events on the device read did the same;
 *   - `compare --format json` wrote `inf` (not JSON) for a trace with no live bytes;
 *   - pickles of protocol 0 and 1 were read as CSV by compare, doctor and report, but as
 *     pickles by import. */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "replay/replay.h"
#include "test_support.h"

static char dir[64];

static const char *const commands[] = {"compare", "replay", "doctor", "report", "import"};

/* Every command on the file: exit 2 and the message. */
static void refused_by_all(const char *path, const char *want)
{
    for (int i = 0; i < 5; i++) {
        fl_run_result *r = fl_test_run("'%s' %s '%s'%s", FL_CLI, commands[i], path,
                               i == 3 ? " -o /dev/null" : i == 4 ? " -o /dev/null" : "");
        if (r->code != 2 || !strstr(r->err, want))
            fprintf(stderr, "%s %s: exit %d, want 2 and '%s':\n%s%s\n", commands[i], path, r->code, want, r->out,
                    r->err);
        CHECK_EQ_U64(r->code, 2);
        CHECK(strstr(r->err, want) != NULL);
    }
}

static void test_empty_file(void)
{
    char path[128], want[192];
    snprintf(path, sizeof path, "%s/empty.csv", dir);
    fl_test_write_file(path, "", 0);
    snprintf(want, sizeof want, "%s: empty file", path);
    refused_by_all(path, want);
    fli_input_kind kind;
    CHECK_STATUS(fli_input_detect(path, &kind), FL_ERR_PARSE);
    CHECK_MENTIONS("empty file");
}

static void test_not_a_trace(void)
{
    char path[128], want[192];
    snprintf(path, sizeof path, "%s/binary.dat", dir);
    fl_test_write_file(path, "\x7f" "ELF\x02\x01\x01\0\0\0", 10);
    snprintf(want, sizeof want, "%s: not a trace or snapshot", path);
    refused_by_all(path, want);
}

/* A snapshot whose device trace is empty and whose segments hold nothing: no events. */
static void test_snapshot_without_events(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/noevents.pickle", dir);
    static const char p[] = "\x80\x02}q\x00(X\x0d\x00\x00\x00" "device_tracesq\x01]q\x02]q\x03" "aX\x08\x00\x00\x00segmentsq\x04]q\x05u.";
    fl_test_write_file(path, p, sizeof p - 1);
    for (int i = 0; i < 4; i++) {
        fl_run_result *r = fl_test_run("'%s' %s '%s'%s", FL_CLI, commands[i], path, i == 3 ? " -o /dev/null" : "");
        CHECK_EQ_U64(r->code, 2);
        CHECK(strstr(r->err, "no events") != NULL);
    }
}

/* Protocols 0 and 1 have no PROTO opcode: they are pickles all the same, for every
 * command (import read them already). */
static void test_old_protocols(void)
{
    static const char p0[] = "(dp0\nVdevice_traces\np1\n(lp2\n(lp3\n(dp4\nVaction\np5\nValloc\np6\nsVaddr\np7\n"
                             "I4096\nsVsize\np8\nI1024\nsVstream\np9\nI0\nsaasVsegments\np10\n(lp11\ns.";
    static const char p1[] = "}q\x00(X\x0d\x00\x00\x00" "device_tracesq\x01]q\x02]q\x03}q\x04(X\x06\x00\x00\x00" "actionq\x05X\x05\x00\x00\x00" "allocq\x06X\x04\x00\x00\x00" "addrq\x07M\x00\x10X\x04\x00\x00\x00sizeq\x08M\x00\x04X\x06\x00\x00\x00streamq\x09K\x00uaaX\x08\x00\x00\x00segmentsq\x0a]q\x0bu.";
    const char *data[2] = {p0, p1};
    size_t len[2] = {sizeof p0 - 1, sizeof p1 - 1};
    for (int v = 0; v < 2; v++) {
        char path[128], out[160];
        snprintf(path, sizeof path, "%s/proto%d.pickle", dir, v);
        snprintf(out, sizeof out, "%s/proto%d.html", dir, v);
        fl_test_write_file(path, data[v], len[v]);
        fli_input_kind kind;
        CHECK_OK(fli_input_detect(path, &kind));
        CHECK_EQ_U64(kind, FL_INPUT_PICKLE);
        fl_run_result *r = fl_test_run("'%s' compare '%s' --policies cca --no-min-capacity", FL_CLI, path);
        CHECK(r->code == 0 && strstr(r->out, "1 event,"));
        r = fl_test_run("'%s' replay '%s' --policy cca", FL_CLI, path);
        CHECK(r->code == 0 && strstr(r->out, "1 allocation,"));
        r = fl_test_run("'%s' doctor '%s'", FL_CLI, path);
        CHECK(r->code == 0 && strstr(r->out, "(1 events"));
        r = fl_test_run("'%s' report '%s' -o '%s' --policies cca", FL_CLI, path, out);
        CHECK_EQ_U64(r->code, 0);
        r = fl_test_run("'%s' import '%s' -o /dev/null", FL_CLI, path);
        CHECK_EQ_U64(r->code, 0);
    }
}

/* A trace whose only allocation failed has no live bytes: ratios have no value, and the
 * JSON says null. */
static void test_json_has_no_inf(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/failed.csv", dir);
    const char text[] = "Thread,Time,Action,Pointer,Size,Stream\n0,00:00:00.000001,allocate failure,0x0,1048576,0\n";
    fl_test_write_file(path, text, sizeof text - 1);
    fl_run_result *r = fl_test_run("'%s' compare '%s' --format json", FL_CLI, path);
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "inf") == NULL && strstr(r->out, "nan") == NULL);
    CHECK(strstr(r->out, "\"min_capacity_ratio\": null") != NULL);
    r = fl_test_run("'%s' compare '%s' --format json | python3 -c 'import json,sys; json.load(sys.stdin)' 2>&1 || "
            "! command -v python3 >/dev/null",
            FL_CLI, path);
    CHECK_EQ_U64(r->code, 0);
    r = fl_test_run("'%s' compare '%s'", FL_CLI, path);
    CHECK(r->code == 0 && strstr(r->out, "inf") == NULL);
    r = fl_test_run("'%s' doctor '%s' --format json --capacity 4MiB", FL_CLI, path);
    CHECK(r->code == 0 && strstr(r->out, "inf") == NULL && strstr(r->out, "nan") == NULL);
    /* A trace name that is not a JSON string by itself. */
    char odd[160];
    snprintf(odd, sizeof odd, "%s/we\"ird\\name.csv", dir);
    fl_test_write_file(odd, text, sizeof text - 1);
    r = fl_test_run("'%s' compare '%s' --format json --policies cca --no-min-capacity | python3 -c 'import json,sys; "
            "print(json.load(sys.stdin)[0][\"trace\"])' || ! command -v python3 >/dev/null",
            FL_CLI, odd);
    CHECK(r->code == 0 && (strstr(r->out, "we\"ird\\name.csv") || !r->out[0]));
}

/* A state snapshot is report's alone; import wants a pickle. */
static void test_wrong_kind(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/state.json", dir);
    const char text[] = "{\"format\":\"fragless-state\",\"version\":1,\"policy\":\"fragless\",\"granularity\":2097152,"
                        "\"capacity\":0,\"regions\":[]}";
    fl_test_write_file(path, text, sizeof text - 1);
    fl_run_result *r = fl_test_run("'%s' compare '%s'", FL_CLI, path);
    CHECK(r->code == 2 && strstr(r->err, "a fragless state snapshot"));
    r = fl_test_run("cd '%s' && '%s' import examples/encoder_varlen.csv -o /dev/null", FL_SOURCE_DIR, FL_CLI);
    CHECK(r->code == 2 && strstr(r->err, "not a PyTorch memory snapshot"));
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/fl_input.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_empty_file();
    test_not_a_trace();
    test_snapshot_without_events();
    test_old_protocols();
    test_json_has_no_inf();
    test_wrong_kind();
    fl_test_run("rm -rf '%s'", dir);
    return fl_test_done("test_hostile_input");
}
