/* Fuzz target: the commands that consume a trace or a PyTorch snapshot's fields — doctor
 * (text and JSON), fidelity and report — run in-process as the CLI runs them
 * (cli_doctor, cli_fidelity, cli_report) on the input written to a file of a private
 * temporary folder. Byte 0 picks the options (capacity, policy, granularity, formats,
 * policies); the rest is the file, whatever it holds (CSV, pickle, anything: the input
 * detection decides). What the commands print is caught (fz_mute); the report is written
 * in the temporary folder.
 *
 * Budget: the commands replay the trace dozens of times (min_capacity searches, the
 * doctor's what-if rows), so they run only on traces of at most FZ_MAX_OPS events whose
 * allocations total at most FZ_MAX_BYTES; larger ones are loaded only. Each input takes
 * milliseconds.
 *
 * Properties: the exit code says what happened (0 when the input loads; 2 for an input
 * that cannot be read, with its message); doctor's JSON is JSON; no figure printed is
 * nan or inf; a report that fails leaves no file behind, one that succeeds is a whole
 * page whose tags are the report's own (the file name, full of HTML, is escaped) and
 * whose SVG and data attributes are numbers. */
#include <ctype.h>
#include <dirent.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli/cli.h"
#include "fuzz.h"
#include "pytorch/snapshot.h"
#include "replay/input.h"
#include "util/json.h"

#define FZ_MAX_OPS 64
#define FZ_MAX_BYTES ((uint64_t)16 << 30)

/* The input's name: markup and quotes, so that every place it is printed must escape it. */
#define FZ_NAME "t<b title=\"x\">&amp;'.in"
#define FZ_REPORT "report.html"

typedef struct printed {
    char *out, *err;
    size_t out_len, err_len;
} printed;

static void free_printed(printed *p)
{
    free(p->out);
    free(p->err);
}

/* A figure that is not a number: "nan", "inf" (any case, any sign) as a word. */
static const char *non_finite(const char *s)
{
    for (const char *p = s; *p; p++) {
        if (p > s && isalpha((unsigned char)p[-1]))
            continue;
        if ((!strncasecmp(p, "nan", 3) || !strncasecmp(p, "inf", 3)) && !isalpha((unsigned char)p[3]))
            return p;
    }
    return NULL;
}

static void check_json(const char *text, size_t len)
{
    fli_json j;
    memset(&j, 0, sizeof j);
    j.s = text;
    j.n = len;
    j.name = "doctor.json";
    j.max_depth = 16;
    fl_status s = fli_json_skip(&j);
    FZ_CHECK(s == FL_OK, "doctor --format json printed no JSON: %s\n%s", fl_last_error(), text);
    fli_json_ws(&j);
    FZ_CHECK(j.pos == j.n, "doctor --format json: text after the JSON value at byte %zu", j.pos);
}

/* The folder holds only what this target wrote: a command leaves no temporary file. */
static void check_no_leftovers(int report_expected)
{
    DIR *d = opendir(fz_tmpdir());
    FZ_CHECK(d != NULL, "temporary folder gone");
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, ".stdout") || !strcmp(n, ".stderr") ||
            !strcmp(n, FZ_NAME) || (report_expected && !strcmp(n, FZ_REPORT)))
            continue;
        FZ_CHECK(0, "a command left '%s' behind", n);
    }
    closedir(d);
}

/* loaded: the input loads, so the command must succeed. */
static int doctor(const char *path, uint8_t opt, const char *capacity, int loaded, printed *p)
{
    char *argv[12];
    int argc = 0;
    argv[argc++] = (char *)path;
    if (capacity) {
        argv[argc++] = "--capacity";
        argv[argc++] = (char *)capacity;
    }
    if (opt & 0x08) {
        argv[argc++] = "--policy";
        argv[argc++] = opt & 0x80 ? "cca-expandable" : "fragless";
    }
    if (opt & 0x04) {
        argv[argc++] = "--format";
        argv[argc++] = "json";
    }
    if (opt & 0x10) {
        argv[argc++] = "--granularity";
        argv[argc++] = opt & 0x20 ? "1GiB" : "64KiB";
    }
    argv[argc] = NULL;
    cli_opts o;
    fz_mute();
    int rc = cli_parse_opts(argc, argv, CLI_DOCTOR, &o);
    FZ_CHECK(rc == 0, "doctor's options refused: %d", rc);
    rc = cli_doctor(&o);
    fz_unmute(&p->out, &p->out_len, &p->err, &p->err_len);
    FZ_CHECK(rc == CLI_EXIT_OK || rc == CLI_EXIT_INPUT, "doctor exit %d: %s", rc, p->err);
    FZ_CHECK(!loaded || rc == CLI_EXIT_OK, "doctor failed on a trace that loads: %s", p->err);
    if (rc == CLI_EXIT_OK) {
        FZ_CHECK(p->out_len > 0, "doctor printed nothing");
        if (opt & 0x04)
            check_json(p->out, p->out_len);
        const char *bad = non_finite(p->out);
        FZ_CHECK(!bad, "doctor printed a figure that is not a number: '%.60s'", bad);
    } else {
        FZ_CHECK(p->err_len > 0, "doctor failed without a message");
    }
    return rc;
}

/* snapshot: the input loads as a PyTorch snapshot, so the command must succeed. */
static int fidelity(const char *path, uint8_t opt, int snapshot, printed *p)
{
    char *argv[4] = {(char *)path, NULL, NULL, NULL};
    int argc = 1;
    if (opt & 0x80) {
        argv[argc++] = "--format";
        argv[argc++] = "csv";
    }
    fz_mute();
    int rc = cli_fidelity(argc, argv);
    fz_unmute(&p->out, &p->out_len, &p->err, &p->err_len);
    FZ_CHECK(rc == CLI_EXIT_OK || rc == CLI_EXIT_INPUT || rc == CLI_EXIT_USAGE, "fidelity exit %d: %s", rc, p->err);
    FZ_CHECK(rc == CLI_EXIT_OK || p->err_len > 0, "fidelity failed without a message");
    FZ_CHECK(!snapshot || rc == CLI_EXIT_OK, "fidelity failed on a snapshot that loads: %s", p->err);
    const char *bad = non_finite(p->out);
    FZ_CHECK(!bad, "fidelity printed a figure that is not a number: '%.60s'", bad);
    return rc;
}

static int report(const char *path, uint8_t opt, const char *capacity, int loaded, printed *p)
{
    char out[4096];
    fz_path(out, FZ_REPORT);
    char *argv[12];
    int argc = 0;
    argv[argc++] = (char *)path;
    argv[argc++] = "-o";
    argv[argc++] = out;
    if (capacity) {
        argv[argc++] = "--capacity";
        argv[argc++] = (char *)capacity;
    }
    if (opt & 0x40) {
        argv[argc++] = "--policies";
        argv[argc++] = "fragless,cca";
    }
    if (opt & 0x10) {
        argv[argc++] = "--granularity";
        argv[argc++] = opt & 0x20 ? "1GiB" : "64KiB";
    }
    argv[argc] = NULL;
    cli_opts o;
    fz_mute();
    int rc = cli_parse_opts(argc, argv, CLI_REPORT, &o);
    FZ_CHECK(rc == 0, "report's options refused: %d", rc);
    rc = cli_report(&o);
    fz_unmute(&p->out, &p->out_len, &p->err, &p->err_len);
    FZ_CHECK(rc == CLI_EXIT_OK || rc == CLI_EXIT_INPUT, "report exit %d: %s", rc, p->err);
    FZ_CHECK(!loaded || rc == CLI_EXIT_OK, "report failed on a trace that loads: %s", p->err);
    /* stdout holds one line, on success: where the page went. */
    char wrote[512];
    snprintf(wrote, sizeof wrote, "fragless: wrote %s\n", o.output);
    FZ_CHECK(rc == CLI_EXIT_OK ? p->out_len == strlen(wrote) && !memcmp(p->out, wrote, p->out_len) : p->out_len == 0,
             "report printed '%.*s' on stdout", (int)p->out_len, p->out);
    check_no_leftovers(rc == CLI_EXIT_OK);
    size_t len;
    char *html = fz_read_file(FZ_REPORT, &len);
    if (rc == CLI_EXIT_OK) {
        FZ_CHECK(html != NULL, "report exit 0 and no file");
        fz_check_report_html(html, len);
        FZ_CHECK(strstr(html, FZ_NAME) == NULL, "the input's name is in the report unescaped");
    } else {
        FZ_CHECK(html == NULL, "a failed report left its file");
        FZ_CHECK(p->err_len > 0, "report failed without a message");
    }
    free(html);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t opt = data[0];
    char path[4096];
    fz_write_file(path, FZ_NAME, data + 1, size - 1);

    /* The budget, and whether the commands must succeed: the input loads as they load it. */
    fli_prepared *pr;
    fli_snapshot_info info;
    int loaded = fli_load_trace_ex(path, 0, NULL, &pr, &info) == FL_OK;
    /* The commands read more than device 0: doctor and report the OOM's device or every
     * device with events, fidelity every device with events. What must succeed is what
     * loads as they load it. */
    int loads_default = 0, loads_all = 0;
    if (loaded && info.n_devices) {
        fli_loaded *lv;
        int ln;
        if ((loads_default = fli_load_inputs(path, FL_DEVICE_DEFAULT, NULL, &lv, &ln) == FL_OK))
            fli_loaded_free(lv, ln);
        if ((loads_all = fli_load_inputs(path, FL_DEVICE_ALL, NULL, &lv, &ln) == FL_OK))
            fli_loaded_free(lv, ln);
    }
    static const char *const capacities[4] = {NULL, "1.05x", "0.9x", "64MiB"};
    const char *capacity = capacities[opt & 3];
    if (loaded) {
        /* Without --capacity, a snapshot dumped at an oom gives it: reserved + device_free,
         * refused past 2^64. */
        uint64_t cap;
        if (!capacity && info.n_devices && info.oom_entry >= 0 &&
            fli_snapshot_oom_capacity(&info, "", &cap) != FL_OK)
            loaded = 0;
        uint64_t bytes = 0;
        for (size_t i = 0; i < pr->n_ops; i++)
            bytes += pr->ops[i].size > FZ_MAX_BYTES ? FZ_MAX_BYTES + 1 : pr->ops[i].size;
        int small = pr->n_ops <= FZ_MAX_OPS && bytes <= FZ_MAX_BYTES;
        fli_prepared_free(pr);
        if (!small) {
            fz_clear_tmpdir();
            return 0;
        }
    }
    printed p;
    int must = loaded && (!info.n_devices || loads_default);
    doctor(path, opt, capacity, must, &p);
    free_printed(&p);
    fidelity(path, opt, loaded && info.n_devices && loads_all, &p);
    free_printed(&p);
    report(path, opt, capacity, must, &p);
    free_printed(&p);
    fz_clear_tmpdir();
    return 0;
}
