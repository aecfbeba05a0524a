/* Issue 15, item 6: a replay that failed is never shown as a success. With more than 255
 * streams, fragless on the default sim device runs out of address space (255 streams'
 * heaps fit) and 45 of 300 allocations fail even without a capacity; `compare
 * --no-min-capacity` printed its row like any other and exited 0, and `replay` exited 0.
 * Now: the row is marked with the failures in every format (a column in CSV, a field in
 * JSON) and the exit code is 3 (out of memory). */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "test_support.h"

static char trace[64];

static void write_trace(void)
{
    snprintf(trace, sizeof trace, "/tmp/fl_streams300.XXXXXX");
    int fd = mkstemp(trace);
    FILE *f = fdopen(fd, "w");
    fputs("Thread,Time,Action,Pointer,Size,Stream\n", f);
    for (int i = 0; i < 300; i++)
        fprintf(f, "0,00:00:00.%06d,allocate,0x%x,1048576,0x%x\n", i, (i + 1) << 20, i + 1);
    for (int i = 0; i < 300; i++)
        fprintf(f, "0,00:00:01.%06d,free,0x%x,1048576,0x%x\n", i, (i + 1) << 20, i + 1);
    fclose(f);
}

static void test_compare(void)
{
    fl_run_result *r = fl_test_run("'%s' compare '%s' --no-min-capacity --policies fragless,nocache", FL_CLI, trace);
    CHECK_EQ_U64(r->code, 3);
    CHECK(strstr(r->out, "FAILED: 45 allocations out of memory") != NULL);
    /* the row that did not fail is not marked */
    const char *nocache = strstr(r->out, "  nocache");
    CHECK(nocache && !strstr(nocache, "FAILED"));
    CHECK(strstr(r->err, "45 allocations failed") != NULL);

    r = fl_test_run("'%s' compare '%s' --no-min-capacity --policies fragless,nocache --format json", FL_CLI, trace);
    CHECK_EQ_U64(r->code, 3);
    CHECK(strstr(r->out, "\"policy\": \"fragless\"") && strstr(r->out, "\"unlimited_ooms\": 45"));
    CHECK(strstr(r->out, "\"unlimited_ooms\": 0") != NULL); /* nocache */
    CHECK(strstr(r->out, "\"failed\": true") != NULL);

    r = fl_test_run("'%s' compare '%s' --no-min-capacity --policies fragless --format csv", FL_CLI, trace);
    CHECK_EQ_U64(r->code, 3);
    CHECK(strstr(r->out, ",unlimited_ooms,streams_floor\n") != NULL);
    const char *row = strchr(r->out, '\n'), *last = row ? strrchr(row, ',') : NULL;
    CHECK(last && last - row >= 3 && !strncmp(last - 3, ",45,", 4)); /* unlimited_ooms, then the floor */

    /* With the search (the default), the failure is an error, as before. */
    r = fl_test_run("'%s' compare '%s' --policies fragless", FL_CLI, trace);
    CHECK(r->code != 0);
}

static void test_replay(void)
{
    fl_run_result *r = fl_test_run("'%s' replay '%s'", FL_CLI, trace);
    CHECK_EQ_U64(r->code, 3);
    CHECK(strstr(r->out, "out of memory: 45 allocations") != NULL);
    r = fl_test_run("'%s' replay '%s' --format json", FL_CLI, trace);
    CHECK_EQ_U64(r->code, 3);
    CHECK(strstr(r->out, "\"ooms\": 45") != NULL);
    /* A trace that fits: exit 0. */
    r = fl_test_run("'%s' replay '%s' --policy nocache", FL_CLI, trace);
    CHECK_EQ_U64(r->code, 0);
}

int main(void)
{
    write_trace();
    test_compare();
    test_replay();
    unlink(trace);
    return fl_test_done("test_hostile_results");
}
