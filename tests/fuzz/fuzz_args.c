/* Fuzz target: the command line's option parsers, in-process (src/cli/options.c and each
 * command's cli_*_parse): the bytes are the words after `fragless`, separated by NULs,
 * the first naming the command. Parsing runs nothing (no file is read or written, no
 * command started). Properties: a parser returns 0, "help shown" or the usage exit code;
 * a refusal prints its reason on stderr and nothing on stdout, help goes to stdout only,
 * a success prints nothing; what a success returns is within its documented ranges and
 * points into argv; parsing the same words again gives the same result. */
#include <math.h>
#include <string.h>

#include "cli/cli.h"
#include "fuzz.h"
#include "util/util.h"

#define FZ_MAX_WORDS 64

typedef struct printed {
    char *out, *err;
    size_t out_len, err_len;
} printed;

static void end_capture(printed *p)
{
    fz_unmute(&p->out, &p->out_len, &p->err, &p->err_len);
}

static void free_printed(printed *p)
{
    free(p->out);
    free(p->err);
}

/* What every parser prints, by its result. */
static void check_printed(const char *cmd, int rc, const printed *p, const char *help)
{
    FZ_CHECK(rc == 0 || rc == CLI_HELP_SHOWN || rc == CLI_EXIT_USAGE, "%s: parse returned %d", cmd, rc);
    if (rc == 0) {
        FZ_CHECK(p->out_len == 0 && p->err_len == 0, "%s: a successful parse printed '%s' '%s'", cmd, p->out, p->err);
    } else if (rc == CLI_HELP_SHOWN) {
        FZ_CHECK(p->err_len == 0 && p->out_len > 0, "%s: help with stderr '%s'", cmd, p->err);
        if (help)
            FZ_CHECK(!strcmp(p->out, help), "%s: the help printed is not the command's", cmd);
    } else {
        FZ_CHECK(p->out_len == 0, "%s: a refusal printed on stdout: '%s'", cmd, p->out);
        FZ_CHECK(!strncmp(p->err, "fragless", 8), "%s: a refusal without its reason: '%s'", cmd, p->err);
    }
}

/* Whether s is one of the words (the very pointer: the parsers keep no copies). */
static int is_word(const char *s, char **argv, int argc)
{
    for (int i = 0; i < argc; i++)
        if (s == argv[i])
            return 1;
    return 0;
}

static void check_opts(cli_mode mode, const cli_opts *o, char **argv, int argc)
{
    const char *cmd = cli_mode_name(mode);
    int multi = mode == CLI_COMPARE || mode == CLI_REPORT;
    FZ_CHECK(o->n_traces >= 1 && o->n_traces <= CLI_MAX_TRACES, "%s: %d traces", cmd, o->n_traces);
    /* doctor takes several only as one job's rank files (checked after parsing). */
    FZ_CHECK(multi || mode == CLI_DOCTOR || o->n_traces == 1, "%s: %d traces for a one-trace command", cmd,
             o->n_traces);
    for (int i = 0; i < o->n_traces; i++) {
        FZ_CHECK(is_word(o->traces[i], argv, argc), "%s: trace %d is not a word of the command line", cmd, i);
        FZ_CHECK(o->traces[i][0] != '-' || o->traces[i][1] == 0, "%s: option '%s' taken as a trace", cmd,
                 o->traces[i]);
    }
    uint64_t g = o->opts.sim.granularity;
    FZ_CHECK(fli_is_pow2(g) && g >= 4096 && g <= FL_GiB, "%s: granularity %llu", cmd, (unsigned long long)g);
    FZ_CHECK(o->capacity_factor == 0 || (o->capacity_factor > 0 && o->capacity_factor <= 1e6),
             "%s: capacity factor %g", cmd, o->capacity_factor);
    FZ_CHECK(o->timeline >= 0 && o->timeline <= 10000, "%s: timeline %d", cmd, o->timeline);
    FZ_CHECK(o->policies && (is_word(o->policies, argv, argc) || !strncmp(o->policies, "fragless", 8) ||
                             !strcmp(o->policies, "cca")),
             "%s: policies '%s' from nowhere", cmd, o->policies);
    FZ_CHECK(o->format, "%s: no format", cmd);
    /* One vocabulary: text (table is read as text), csv, json; doctor has no csv, report
     * no --format at all. */
    if (mode == CLI_DOCTOR)
        FZ_CHECK(!strcmp(o->format, "text") || !strcmp(o->format, "json"), "doctor: format '%s'", o->format);
    else if (mode == CLI_REPORT)
        FZ_CHECK(!strcmp(o->format, "text"), "report: format '%s'", o->format);
    else
        FZ_CHECK(!strcmp(o->format, "text") || !strcmp(o->format, "csv") || !strcmp(o->format, "json"),
                 "%s: format '%s'", cmd, o->format);
    FZ_CHECK(multi || !strchr(o->policies, ','), "%s: a list of policies '%s' for a one-policy command", cmd,
             o->policies);
    if (mode == CLI_REPORT)
        FZ_CHECK(o->output && o->output[0] && is_word(o->output, argv, argc), "report: output '%s'",
                 o->output ? o->output : "(null)");
    else
        FZ_CHECK(o->output == NULL, "%s: an output", cmd);
    FZ_CHECK(o->min_capacity == 0 || o->min_capacity == 1, "%s: min_capacity %d", cmd, o->min_capacity);
    FZ_CHECK(fli_policy_find(o->opts.cfg.policy) != NULL, "%s: --conf left policy '%s'", cmd, o->opts.cfg.policy);
}

/* The steps after parsing that still read only the options: the policy list, and
 * --capacity turned into bytes for a trace whose peak live bytes come from the input. */
static void use_opts(const cli_opts *o, uint64_t peak_live)
{
    char names[CLI_MAX_POLICIES][32];
    int np = -1;
    printed p;
    fz_mute();
    int rc = cli_split_policies(o->policies, names, &np);
    end_capture(&p);
    FZ_CHECK(rc == 0 || rc == CLI_EXIT_USAGE, "split_policies returned %d", rc);
    if (rc == 0) {
        FZ_CHECK(np >= 1 && np <= CLI_MAX_POLICIES && p.err_len == 0, "%d policies", np);
        for (int i = 0; i < np; i++)
            FZ_CHECK(fli_policy_find(names[i]) != NULL, "unknown policy '%s' accepted", names[i]);
    } else {
        FZ_CHECK(p.err_len > 0 && p.out_len == 0, "policies refused without a reason");
    }
    free_printed(&p);

    fli_prepared fake;
    memset(&fake, 0, sizeof fake);
    fake.name = "trace.csv";
    fake.peak_live = peak_live;
    uint64_t cap = 1;
    fz_mute();
    rc = cli_capacity_for(o, &fake, &cap);
    end_capture(&p);
    FZ_CHECK(rc == 0 || rc == CLI_EXIT_USAGE, "capacity_for returned %d", rc);
    if (rc == 0) {
        uint64_t g = o->opts.sim.granularity;
        if (o->capacity_factor > 0) {
            FZ_CHECK(cap >= g && cap % g == 0, "capacity %llu of a factor: not whole pages of %llu",
                     (unsigned long long)cap, (unsigned long long)g);
            FZ_CHECK(cap == g || (double)cap <= (double)peak_live * o->capacity_factor,
                     "capacity %llu is more than %g x %llu", (unsigned long long)cap, o->capacity_factor,
                     (unsigned long long)peak_live);
        } else {
            FZ_CHECK(cap == o->capacity, "capacity %llu, asked %llu", (unsigned long long)cap,
                     (unsigned long long)o->capacity);
        }
    } else {
        FZ_CHECK(o->capacity_factor > 0 && p.err_len > 0, "capacity refused without a factor or a reason");
    }
    free_printed(&p);
}

static void run_mode(cli_mode mode, int argc, char **argv, uint64_t peak_live)
{
    cli_opts o, again;
    printed p, q;
    fz_mute();
    int rc = cli_parse_opts(argc, argv, mode, &o);
    end_capture(&p);
    check_printed(cli_mode_name(mode), rc, &p, cli_help(cli_mode_name(mode)));
    fz_mute();
    int rc2 = cli_parse_opts(argc, argv, mode, &again);
    end_capture(&q);
    FZ_CHECK(rc2 == rc && q.out_len == p.out_len && q.err_len == p.err_len && !memcmp(q.out, p.out, p.out_len) &&
                 !memcmp(q.err, p.err, p.err_len),
             "%s: parsing the same words again: %d then %d", cli_mode_name(mode), rc, rc2);
    if (rc == 0) {
        FZ_CHECK(!memcmp(&o, &again, sizeof o), "%s: parsing the same words again gave other options",
                 cli_mode_name(mode));
        check_opts(mode, &o, argv, argc);
        use_opts(&o, peak_live);
    }
    free_printed(&p);
    free_printed(&q);
}

static void run_import(int argc, char **argv)
{
    cli_import_opts o;
    printed p;
    fz_mute();
    int rc = cli_import_parse(argc, argv, &o);
    end_capture(&p);
    check_printed("import", rc, &p, NULL);
    if (rc == 0) {
        FZ_CHECK(o.in && o.out && is_word(o.in, argv, argc) && is_word(o.out, argv, argc), "import: in or out");
        FZ_CHECK(o.in[0] != '-' || o.in[1] == 0, "import: option '%s' taken as the snapshot", o.in);
        FZ_CHECK(o.device >= -1 && o.device <= 1023, "import: device %d (-1: every device with events)", o.device);
    }
    free_printed(&p);
}

static void run_fidelity(int argc, char **argv)
{
    cli_fidelity_opts o;
    printed p;
    fz_mute();
    int rc = cli_fidelity_parse(argc, argv, &o);
    end_capture(&p);
    check_printed("fidelity", rc, &p, NULL);
    if (rc == 0) {
        /* The command walks argv again for the snapshots: it must find as many. */
        int n = 0;
        for (int i = 0; i < argc; i++) {
            if (argv[i][0] == '-') {
                i += !strcmp(argv[i], "--format") || !strcmp(argv[i], "--device");
                continue;
            }
            n++;
        }
        FZ_CHECK(n == o.n_snapshots && n >= 1, "fidelity: parsed %d snapshots, the command would read %d",
                 o.n_snapshots, n);
        FZ_CHECK((o.csv == 0 || o.csv == 1) && (o.json == 0 || o.json == 1) && !(o.csv && o.json), "fidelity: csv %d json %d", o.csv, o.json);
    }
    free_printed(&p);
}

static void run_top(int argc, char **argv)
{
    cli_top_opts o;
    printed p;
    fz_mute();
    int rc = cli_top_parse(argc, argv, &o);
    end_capture(&p);
    check_printed("top", rc, &p, NULL);
    if (rc == 0) {
        FZ_CHECK(o.interval >= 0.1 && o.interval <= 3600, "top: interval %g", o.interval);
        FZ_CHECK(!o.dir || is_word(o.dir, argv, argc), "top: dir from nowhere");
    }
    free_printed(&p);
}

static void run_run(int argc, char **argv)
{
    cli_run_opts o;
    printed p;
    fz_mute();
    int rc = cli_run_parse(argc, argv, &o);
    end_capture(&p);
    check_printed("run", rc, &p, NULL);
    if (rc == 0) {
        FZ_CHECK(o.cmd && o.cmd >= argv && o.cmd < argv + argc && argv[argc] == NULL, "run: command not in argv");
        FZ_CHECK(strlen(o.conf) < sizeof o.conf, "run: conf not terminated");
        fl_config cfg;
        fl_config_default(&cfg);
        FZ_CHECK(fl_config_parse(&cfg, o.conf) == FL_OK, "run: accepted a conf that does not parse: %s",
                 fl_last_error());
    }
    free_printed(&p);
}

static void run_gen(int argc, char **argv)
{
    cli_gen_opts o, again;
    printed p, q;
    fz_mute();
    int rc = cli_gen_parse(argc, argv, &o);
    end_capture(&p);
    check_printed("gen", rc, &p, NULL);
    if (rc == 0) {
        /* What it accepts, the generator accepts, and each rank's file name expands. */
        FZ_CHECK(fli_gen_check(&o.p) == FL_OK, "gen: accepted what the generator refuses: %s", fl_last_error());
        FZ_CHECK(o.output && is_word(o.output, argv, argc), "gen: output from nowhere");
        FZ_CHECK(o.p.ranks == 1 || strstr(o.output, "%r"), "gen: %d ranks into one file '%s'", o.p.ranks, o.output);
        char path[4096];
        FZ_CHECK(fli_gen_path(o.output, o.p.ranks - 1, path, sizeof path) == FL_OK, "gen: '%s' does not expand: %s",
                 o.output, fl_last_error());
    }
    fz_mute();
    int rc2 = cli_gen_parse(argc, argv, &again);
    end_capture(&q);
    FZ_CHECK(rc2 == rc && (rc || !memcmp(&o.p, &again.p, sizeof o.p)), "gen: parsing again gave another result");
    free_printed(&p);
    free_printed(&q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        /* `run` falls back on the inherited FRAGLESS_CONF: the same words must always
         * parse alike, whatever environment the fuzzer was started in. */
        unsetenv("FRAGLESS_CONF");
        once = 1;
    }
    /* Words between NULs; each its own allocation of its exact length, so reading past
     * one is seen by ASan. argv[argc] is NULL, as in main(). */
    char *argv[FZ_MAX_WORDS + 1];
    int argc = 0;
    size_t start = 0;
    uint64_t peak_live = 0;
    for (size_t i = 0; i <= size && argc < FZ_MAX_WORDS; i++) {
        if (i < size && data[i] != 0)
            continue;
        if (i == size && start == size && argc > 0)
            break; /* a final NUL ends the last word; it starts no empty one */
        size_t n = i - start;
        argv[argc] = malloc(n + 1);
        FZ_CHECK(argv[argc] != NULL, "no memory");
        memcpy(argv[argc], data + start, n);
        argv[argc][n] = 0;
        argc++;
        start = i + 1;
    }
    argv[argc] = NULL;
    for (size_t i = 0; i < size && i < 8; i++)
        peak_live = peak_live << 8 | data[size - 1 - i];

    const char *cmd = argc ? argv[0] : "";
    int rest = argc ? argc - 1 : 0;
    char **words = argc ? argv + 1 : argv;
    cli_mode mode;
    if (cli_mode_of(cmd, &mode) == 0) {
        run_mode(mode, rest, words, peak_live);
    } else if (!strcmp(cmd, "import")) {
        run_import(rest, words);
    } else if (!strcmp(cmd, "fidelity")) {
        run_fidelity(rest, words);
    } else if (!strcmp(cmd, "top")) {
        run_top(rest, words);
    } else if (!strcmp(cmd, "run")) {
        run_run(rest, words);
    } else if (!strcmp(cmd, "gen")) {
        run_gen(rest, words);
    } else {
        /* Any other word: every parser in turn, as if it named each command. */
        for (int m = CLI_REPLAY; m <= CLI_REPORT; m++)
            run_mode((cli_mode)m, rest, words, peak_live);
        run_import(rest, words);
        run_fidelity(rest, words);
        run_top(rest, words);
        run_run(rest, words);
        run_gen(rest, words);
        FZ_CHECK(cli_help(cmd) != NULL, "no help for '%s'", cmd);
    }
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    return 0;
}
