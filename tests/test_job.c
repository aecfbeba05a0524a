/* A multi-GPU job at once (src/cli/job.c): compare, doctor and report on four rank traces
 * made by `fragless gen`, given as a folder, a %r name or the files; the job line names
 * the rank that needs most and the spread, checked against each rank compared alone. */
#include "test_support.h"

#include "allocator/allocator.h"

#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];

/* A figure of `key` in JSON text (the first one). */
static uint64_t json_u64(const char *text, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *p = strstr(text, k);
    return p ? strtoull(p + strlen(k), NULL, 10) : 0;
}

static double gib(uint64_t b) { return (double)b / (double)(UINT64_C(1) << 30); }

/* top: three processes of one parent (this test, as torchrun's agent is its workers'),
 * ranks 0-2, publishing 1, 2 and 3 GiB reserved, make one job line; a process without a
 * rank joins none. */
static void test_top_jobs(void)
{
    char tdir[128];
    snprintf(tdir, sizeof tdir, "%s/top", dir);
    CHECK(mkdir(tdir, 0700) == 0);
    pid_t kids[4];
    int ctl[2];
    CHECK(pipe(ctl) == 0);
    fflush(NULL);
    for (int k = 0; k < 4; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            char c;
            close(ctl[1]);
            _exit(read(ctl[0], &c, 1) < 0);
        }
        fli_pub_record rec;
        memset(&rec, 0, sizeof rec);
        rec.magic = FL_PUB_MAGIC;
        rec.version = FL_PUB_VERSION;
        rec.size = sizeof rec;
        rec.pid = (uint64_t)kids[k];
        rec.start_time = fli_proc_start_time(rec.pid);
        rec.rank = k < 3 ? k : -1;
        snprintf(rec.comm, sizeof rec.comm, "worker");
        fl_stats st;
        memset(&st, 0, sizeof st);
        st.reserved_bytes.current = (uint64_t)(k + 1) << 30;
        st.allocated_bytes.current = (uint64_t)(k + 1) << 29;
        uint64_t w[FL_PUB_WORDS];
        w[0] = 1;
        memcpy(&w[1], &st, sizeof st);
        for (size_t i = 0; i < FL_PUB_WORDS; i++)
            rec.words[i] = w[i];
        char path[256];
        snprintf(path, sizeof path, "%s/fragless.%d.0", tdir, (int)kids[k]);
        FILE *f = fopen(path, "wb");
        CHECK(f && fwrite(&rec, sizeof rec, 1, f) == 1);
        if (f)
            fclose(f);
    }
    close(ctl[0]);
    fl_run_result *r = fl_test_run("FRAGLESS_NVML_LIB=/nonexistent/libnvidia-ml.so.1 %s top --once --dir %s", FL_CLI, tdir);
    CHECK_EQ_U64(r->code, 0);
    char want[256], a[32], b[32], m[32], s[32];
    snprintf(want, sizeof want, "job %d (test_job): 3 processes, ranks 0-2, live %s, reserved %s; rank 2 holds the most "
             "(%s reserved), spread %s", (int)getpid(), fl_format_size(UINT64_C(3) << 30, a, sizeof a),
             fl_format_size(UINT64_C(6) << 30, b, sizeof b), fl_format_size(UINT64_C(3) << 30, m, sizeof m),
             fl_format_size(UINT64_C(2) << 30, s, sizeof s));
    if (!strstr(r->out, want)) {
        CHECK(!"top's job line");
        fprintf(stderr, "  want: %s\n  got: %s%s\n", want, r->out, r->err);
    }
    /* Four processes listed, the one without a rank too. */
    CHECK(strstr(r->out, "4 allocators") != NULL);
    close(ctl[1]);
    for (int k = 0; k < 4; k++)
        waitpid(kids[k], NULL, 0);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/fl_test_job_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    fl_run_result *r = fl_test_run("%s gen --kind ddp --ranks 4 --steps 3 --layers 2 --hidden 256 --vocab 2000 "
                                   "--seq 2048 --imbalance 0.5 --seed 5 -o %s/job/t.rank%%r.csv",
                                   FL_CLI, dir);
    CHECK_EQ_U64(r->code, 0);
    /* Each rank alone: its min_capacity under fragless and cca. */
    uint64_t need[2][4];
    const char *pol[2] = {"fragless", "cca"};
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 2; i++) {
            r = fl_test_run("%s compare %s/job/t.rank%d.csv --policy %s --format json", FL_CLI, dir, k, pol[i]);
            CHECK_EQ_U64(r->code, 0);
            need[i][k] = json_u64(r->out, "min_capacity");
            CHECK(need[i][k] > 0);
        }
    char want[2][256];
    for (int i = 0; i < 2; i++) {
        int most = 0, least = 0;
        for (int k = 1; k < 4; k++) {
            if (need[i][k] > need[i][most])
                most = k;
            if (need[i][k] < need[i][least])
                least = k;
        }
        /* The ranks differ: the test means something. */
        CHECK(need[i][most] > need[i][least]);
        snprintf(want[i], sizeof want[i],
                 "job: rank %d needs the most: %.3f GiB min_capacity under %s; rank %d the least: %.3f GiB; "
                 "spread %.3f GiB",
                 most, gib(need[i][most]), pol[i], least, gib(need[i][least]), gib(need[i][most] - need[i][least]));
    }
    /* The folder, the %r name and the four files (in any order) are the same job. */
    const char *forms[] = {"%s/job", "%s/job/t.rank%%r.csv",
                           "%s/job/t.rank3.csv %s/job/t.rank1.csv %s/job/t.rank0.csv %s/job/t.rank2.csv"};
    for (int f = 0; f < 3; f++) {
        char inputs[512];
        snprintf(inputs, sizeof inputs, forms[f], dir, dir, dir, dir);
        for (int i = 0; i < 2; i++) {
            r = fl_test_run("%s compare %s --policy %s,cca-expandable", FL_CLI, inputs, pol[i]);
            CHECK_EQ_U64(r->code, 0);
            if (!strstr(r->out, want[i])) {
                CHECK(!"compare's job line");
                fprintf(stderr, "  want: %s\n  got: %.2000s\n", want[i], r->out);
            }
            CHECK(strstr(r->out, "job ") && strstr(r->out, "/job/t.rank%r.csv: 4 ranks"));
            /* Per-rank sections, in rank order. */
            const char *a = strstr(r->out, "t.rank0.csv:"), *b = strstr(r->out, "t.rank3.csv:");
            CHECK(a && b && a < b);
        }
    }
    /* JSON: the job object after the rows. */
    r = fl_test_run("%s compare %s/job --policy fragless --format json", FL_CLI, dir);
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "{\"job\": ") != NULL);
    CHECK(strstr(r->out, "\"ranks\": [0, 1, 2, 3]") != NULL);
    {
        int most = 0;
        for (int k = 1; k < 4; k++)
            if (need[0][k] > need[0][most])
                most = k;
        char m[64];
        snprintf(m, sizeof m, "\"most_rank\": %d", most);
        CHECK(strstr(r->out, m) != NULL);
    }
    /* report: the ranks side by side, each rank's figure as compare gave it. */
    r = fl_test_run("%s report %s/job --policy fragless,cca -o %s/job.html", FL_CLI, dir, dir);
    CHECK_EQ_U64(r->code, 0);
    char path[128];
    snprintf(path, sizeof path, "%s/job.html", dir);
    char *html = fl_test_read_file(path);
    CHECK(html && strstr(html, "ranks side by side"));
    for (int k = 0; html && k < 4; k++) {
        char cell[96];
        snprintf(cell, sizeof cell, "<td data-rank=\"%d\" data-v=\"%llu\">", k, (unsigned long long)need[0][k]);
        CHECK(strstr(html, cell) != NULL);
    }
    free(html);
    /* doctor: each rank's diagnosis, then the job (what ran: cca by default). */
    r = fl_test_run("%s doctor %s/job", FL_CLI, dir);
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "rank 3: ") != NULL);
    CHECK(strstr(r->out, "min_capacity under what ran (cca)") != NULL);
    /* Not a job: one file keeps its output; unrelated files get no job line; doctor
     * refuses them. */
    r = fl_test_run("%s compare %s/job/t.rank1.csv --policy fragless", FL_CLI, dir);
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "job") == NULL);
    CHECK(fl_test_run("cp %s/job/t.rank1.csv %s/other.csv", dir, dir)->code == 0);
    r = fl_test_run("%s compare %s/job/t.rank1.csv %s/other.csv --policy fragless --no-min-capacity", FL_CLI, dir, dir);
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "job:") == NULL);
    r = fl_test_run("%s doctor %s/job/t.rank1.csv %s/other.csv", FL_CLI, dir, dir);
    CHECK_EQ_U64(r->code, 1);
    CHECK(strstr(r->err, "rank files of one job") != NULL);
    /* Two runs whose names differ in a number that is not 0 to N-1: not a job. */
    CHECK(fl_test_run("cp %s/job/t.rank1.csv %s/run1.csv && cp %s/job/t.rank2.csv %s/run2.csv", dir, dir, dir, dir)->code ==
          0);
    r = fl_test_run("%s compare %s/run1.csv %s/run2.csv --policy fragless --no-min-capacity", FL_CLI, dir, dir);
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "job:") == NULL);
    r = fl_test_run("%s doctor %s/run1.csv %s/run2.csv", FL_CLI, dir, dir);
    CHECK_EQ_U64(r->code, 1);
    CHECK(strstr(r->err, "0 to N-1") != NULL);
    /* A %r pattern says "a job" itself: ranks 1 and 2 alone are one. */
    r = fl_test_run("%s compare %s/run%%r.csv --policy fragless --no-min-capacity", FL_CLI, dir);
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "job:") != NULL);
    r = fl_test_run("%s compare %s/job/none%%r.csv", FL_CLI, dir);
    CHECK_EQ_U64(r->code, 2);
    CHECK(strstr(r->err, "no file matches") != NULL);
    test_top_jobs();
    fl_test_run("rm -rf %s", dir);
    return fl_test_done("test_job");
}
