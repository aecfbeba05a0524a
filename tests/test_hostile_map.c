/* Issue 15, item 8: `fragless report`'s page maps on regions without blocks: a trace
 * whose only allocation failed (the policy's heap or segment is there, with nothing in
 * it) and a state snapshot whose region lists pages but no blocks. src/cli/report_map.c
 * took `m->blocks + r->block0` with m->blocks NULL: undefined behaviour, which the
 * sanitize_asan suite (UBSan, -fno-sanitize-recover) turns into a failure of this test.
 * In any build: the report is written and its map counts the pages. */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "test_support.h"

static char dir[64];

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f && fputs(text, f) >= 0);
    if (f)
        fclose(f);
}

static void test_only_failed_allocation(void)
{
    char path[128], out[128];
    snprintf(path, sizeof path, "%s/failed.csv", dir);
    snprintf(out, sizeof out, "%s/failed.html", dir);
    write_file(path, "Thread,Time,Action,Pointer,Size,Stream\n"
                     "0,00:00:00.000001,allocate failure,0x0,104857600,0\n");
    fl_run_result *r = fl_test_run("'%s' report '%s' -o '%s'", FL_CLI, path, out);
    if (r->code != 0)
        fprintf(stderr, "report: exit %d: %s\n", r->code, r->err);
    CHECK_EQ_U64(r->code, 0);
    char *html = fl_test_read_file(out);
    CHECK(html && strstr(html, "data-policy=\"fragless\"") && strstr(html, "class=\"sum\""));
    free(html);
}

/* A region with pages (one pinned) and no blocks at all. */
static void test_state_without_blocks(void)
{
    char path[128], out[128];
    snprintf(path, sizeof path, "%s/noblocks.json", dir);
    snprintf(out, sizeof out, "%s/noblocks.html", dir);
    write_file(path, "{\"format\":\"fragless-state\",\"version\":1,\"policy\":\"fragless\",\"granularity\":2097152,"
                     "\"capacity\":0,\"regions\":[{\"kind\":\"heap\",\"addr\":\"0x200000\",\"size\":4194304,"
                     "\"pages\":[[\"0x200000\",2097152,1,1],[\"0x400000\",2097152,0,0]]},"
                     "{\"kind\":\"segment\",\"addr\":\"0x1000000\",\"size\":2097152}]}");
    fl_run_result *r = fl_test_run("'%s' report '%s' -o '%s'", FL_CLI, path, out);
    if (r->code != 0)
        fprintf(stderr, "report: exit %d: %s\n", r->code, r->err);
    CHECK_EQ_U64(r->code, 0);
    char *html = fl_test_read_file(out);
    /* 3 pages: one pinned (its pin count, no block named), one unmapped, one of the
     * segment, cached (mapped whole, no live block). */
    CHECK(html && strstr(html, "data-units=\"3\" data-unmapped=\"1\" data-cached=\"1\" data-pin1=\"1\""));
    free(html);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/fli_map.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_only_failed_allocation();
    test_state_without_blocks();
    fl_test_run("rm -rf '%s'", dir);
    return fl_test_done("test_hostile_map");
}
