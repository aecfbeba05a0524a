/* The command line's words as options: the help texts and the parser of replay, compare,
 * doctor and report. Parsing runs nothing: it returns what was asked, or the exit code
 * of a refusal with its reason on stderr (the fuzz target tests/fuzz/fuzz_args.c drives it
 * in-process). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char main_help[] =
    "usage: fragless COMMAND [ARGS]\n"
    "\n"
    "How much GPU memory does an allocation trace need under each allocator?\n"
    "Traces are RMM CSV logs (Thread,Time,Action,Pointer,Size,Stream) or PyTorch memory\n"
    "snapshots (torch.cuda.memory._dump_snapshot pickles, read without Python).\n"
    "\n"
    "commands:\n"
    "  compare TRACE...   every policy side by side: peak reserved, min capacity, device calls\n"
    "                     (TRACE may be a folder or a job's rank files: NAME%r.csv)\n"
    "  replay TRACE       one policy in detail, with a timeline of device calls\n"
    "  doctor TRACE       is it fragmentation? what to change, and what it would save\n"
    "  report TRACE|STATE... -o FILE.html  the whole picture as one HTML page: timelines, page maps\n"
    "  import SNAPSHOT    a PyTorch memory snapshot (.pickle) to a CSV trace\n"
    "  fidelity SNAPSHOT... how close the PyTorch emulation comes to the recorded reserved memory\n"
    "  run -- CMD...      run any CUDA program with fragless serving its cudaMalloc/cudaFree\n"
    "  top [--once]       live memory of every process using fragless, like nvidia-smi\n"
    "  gen --kind K -o F  a DDP, FSDP or pipeline training job's traces, one per rank\n"
    "  help [COMMAND]     this text, or a command's\n"
    "  version            the version\n"
    "\n"
    "options that mean the same in every command:\n"
    "  --policy LIST      one policy, or a comma-separated list where a command compares\n"
    "                     (--policies is the same option)\n"
    "  --format F         text (default), csv or json (table is the same as text);\n"
    "                     report writes HTML to -o FILE instead\n"
    "  --capacity SIZE    80GiB, 512MiB, 4096 (bytes) or 1.05x (times peak live); decimal\n"
    "                     units (80GB) are refused: 80GB is 74.51 GiB, not an 80 GiB card\n"
    "\n"
    "a multi-GPU job at once (compare, doctor, report): give a folder (its .csv and .pickle\n"
    "files), a name with %r for the rank (trace.rank%r.csv, as trace:PATH names each rank's\n"
    "file) or the rank files themselves. Files whose names differ only in one number, 0 to\n"
    "N-1, are one job's ranks: each rank's figures, then the ranks side by side and a job line (the\n"
    "rank that needs most, the spread between ranks).\n"
    "\n"
    "policies: fragless (ours), cca (PyTorch's default caching allocator),\n"
    "          cca-expandable (PyTorch's expandable segments), nocache (no cache)\n"
    "\n"
    "exit codes: 0 done; 1 bad usage; 2 a trace could not be read or is malformed;\n"
    "            3 replay ran out of memory at --capacity; 4 other error\n";

static const char replay_help[] =
    "usage: fragless replay TRACE [--policy P] [--capacity SIZE] [--conf CONF]\n"
    "                             [--timeline N] [--format text|csv|json]\n"
    "\n"
    "Replays TRACE through one policy on a simulated GPU and reports peak live and\n"
    "reserved memory, OOMs, device calls by kind, simulated device time and host time.\n"
    "\n"
    "  --policy P        fragless (default), cca, cca-expandable, nocache (one; --policies\n"
    "                    is the same option)\n"
    "  --capacity SIZE   device capacity: 80GiB, 512MiB, or 1.05x (times the trace's\n"
    "                    peak live bytes); default unlimited. GB, MB are refused: write\n"
    "                    80GiB for an 80 GiB card, 80e9 for 80 x 10^9 bytes\n"
    "  --conf CONF       FRAGLESS_CONF-style knobs: for cca, max_split_size_mb:128,\n"
    "                    roundup_power2_divisions:4, garbage_collection_threshold:0.8\n"
    "                    (with limit:SIZE), expandable_segments:True; for fragless,\n"
    "                    small_size:256KiB; for all, limit:SIZE\n"
    "  --device N        a PyTorch snapshot's device (default: the device with the\n"
    "                    out-of-memory, else every device with events, one section each)\n"
    "  --granularity SZ  device page size, a power of two from 4KiB to 1GiB (default 2MiB)\n"
    "  --timeline N      also print N windows of the trace: live, reserved, device calls\n"
    "  --min-capacity    also search the smallest capacity that runs without OOM\n"
    "  --format F        text (default; table is the same), csv or json\n"
    "\n"
    "exit codes: 0 done; 1 bad usage; 2 bad trace; 3 out of memory (at --capacity, or\n"
    "            without one: the simulated device ran out of address space); 4 other\n";

static const char compare_help[] =
    "usage: fragless compare TRACE... [--policy LIST] [--capacity SIZE] [--conf CONF]\n"
    "                                 [--format text|csv|json]\n"
    "\n"
    "Replays every TRACE through every policy on a simulated GPU. Per trace and policy:\n"
    "  peak_live      max live bytes (requests rounded up to 512 B)\n"
    "  peak_reserved  max device memory the policy held, without a capacity limit\n"
    "  overhead       peak_reserved / peak_live\n"
    "  min_capacity   smallest capacity (whole pages) that replays with no OOM;\n"
    "                 min_capacity / peak_live is the headline fragmentation figure\n"
    "  calls, dev_ms  device calls and simulated device time without a limit; late_* in\n"
    "                 the steady state: after both the trace's midpoint and its peak of\n"
    "                 live bytes (a steady training loop makes no calls there)\n"
    "Per trace of several streams, the streams' floor (a line above the table, CSV/JSON\n"
    "streams_floor): each stream's most live bytes in the steady state, summed; below it\n"
    "memory must pass between streams there, a device call each time.\n"
    "With --capacity, the same figures at that capacity and the number of OOMs. A policy\n"
    "whose run without a limit had failed allocations (the simulated device's address\n"
    "space: e.g. more than 255 streams under fragless) is marked FAILED (JSON \"failed\",\n"
    "CSV unlimited_ooms) and the exit code is 3.\n"
    "\n"
    "A folder, a name with %r (trace.rank%r.csv) or files whose names differ only in one\n"
    "number, 0 to N-1, are a job's ranks: after the ranks' tables, min_capacity by rank (peak_reserved\n"
    "with --no-min-capacity) side by side\n"
    "and a job line: the rank that needs most under the first policy, the least, and the\n"
    "spread (JSON: one more element, {\"job\": ...}; CSV: the rows only).\n"
    "\n"
    "  --policy LIST     comma-separated (default fragless,cca,cca-expandable,nocache);\n"
    "                    --policies is the same option\n"
    "  --capacity SIZE   80GiB, 512MiB, or 1.05x (times each trace's peak live bytes)\n"
    "  --conf CONF       knobs applied to every policy (see `fragless help replay`)\n"
    "  --device N        a PyTorch snapshot's device (default: the device with the\n"
    "                    out-of-memory, else every device with events, one section each)\n"
    "  --granularity SZ  device page size, a power of two from 4KiB to 1GiB (default 2MiB)\n"
    "  --no-min-capacity skip the min_capacity search (faster)\n"
    "  --format F        text (default; table is the same), csv or json\n"
    "\n"
    "exit codes: 0 done; 1 bad usage; 2 bad trace; 3 a run without a limit ran out of\n"
    "            memory (its row is marked FAILED); 4 other error\n";

static const char doctor_help[] =
    "usage: fragless doctor TRACE|JOB [--capacity SIZE] [--policy P] [--conf CONF] [--format text|json]\n"
    "\n"
    "A diagnosis you can act on. With --capacity (your GPU's memory, or 0.95x of peak\n"
    "live), or from a snapshot that ends in an oom event (capacity = reserved + free on the\n"
    "device then), the trace is replayed under the setting you ran until the first OOM:\n"
    "what was asked, free memory, live bytes, reserved but unallocated, the largest free\n"
    "block, and the verdict by a stated rule: exhaustion when live + asked exceed the\n"
    "capacity, fragmentation otherwise. Then: memory by lifetime (persistent vs transient),\n"
    "the capacity each allocator setting needs (PyTorch's knobs, expandable segments,\n"
    "fragless), and estimates for empty_cache() and gradient accumulation.\n"
    "\n"
    "TRACE may be a job's rank files (a folder, a name with %r, or files whose names differ\n"
    "only in one number): each rank's diagnosis, then the capacity what ran and fragless\n"
    "need by rank, side by side, and a job line (the rank that needs most, the spread;\n"
    "JSON: {\"ranks\": [...], \"job\": {...}}).\n"
    "\n"
    "  --policy P        the allocator the trace ran under (default: what a snapshot's\n"
    "                    allocator_settings say, else cca, PyTorch's default); one\n"
    "                    policy (--policies is the same option)\n"
    "  --conf CONF       its knobs, e.g. max_split_size_mb:256 or expandable_segments:True\n"
    "  --capacity SIZE   80GiB, 512MiB, or a factor of peak live like 1.05x\n"
    "  --device N        a PyTorch snapshot's device (default: the device with the\n"
    "                    out-of-memory, else every device with events, one section each)\n"
    "  --granularity SZ  device page size, a power of two from 4KiB to 1GiB (default 2MiB)\n"
    "  --format F        text (default; table is the same) or json; a diagnosis has no\n"
    "                    CSV form (csv is refused)\n"
    "\n"
    "exit codes: 0 done; 1 bad usage; 2 bad trace; 4 other error\n";

static const char report_help[] =
    "usage: fragless report TRACE|SNAPSHOT|STATE... -o REPORT.html [--policy LIST] [--capacity SIZE]\n"
    "                       [--conf CONF] [--granularity SZ]\n"
    "\n"
    "Writes one self-contained HTML page (inline CSS and SVG; nothing is fetched when it is\n"
    "opened). Per trace: the comparison table (what `fragless compare` prints), live and\n"
    "reserved memory over time under each policy, maps of the device pages at the peak of\n"
    "live bytes under fragless and cca (mapped, cached, pinned by one or several live\n"
    "blocks), and the doctor's verdict and what-if table (`fragless doctor`). A STATE is a\n"
    "state snapshot (JSON, from fl_allocator_snapshot, oom_snapshot:PATH or Python's\n"
    "fragless.snapshot()): its statistics and its page map; --policy and --capacity do\n"
    "not apply to it. On success it prints the path it wrote. It has no --format: the\n"
    "page is HTML (compare, replay and doctor print text, csv or json). A job's rank files\n"
    "(a folder, a name with %r, or files whose names differ only in one number, 0 to N-1)\n"
    "end the page with the ranks side by side: peak live and each policy's min_capacity by\n"
    "rank, the rank that needs most and the spread.\n"
    "\n"
    "  -o, --output FILE the HTML file to write (required)\n"
    "  --policy LIST     comma-separated (default fragless,cca,cca-expandable,nocache);\n"
    "                    --policies is the same option\n"
    "  --capacity SIZE   your GPU's memory (80GiB, or 1.05x of peak live): OOMs at it in\n"
    "                    the table, and the doctor's out-of-memory diagnosis\n"
    "  --conf CONF       knobs applied to every policy (see `fragless help replay`)\n"
    "  --device N        a PyTorch snapshot's device (default: the device with the\n"
    "                    out-of-memory, else every device with events, one section each)\n"
    "  --granularity SZ  device page size, a power of two from 4KiB to 1GiB (default 2MiB)\n"
    "\n"
    "exit codes: 0 done; 1 bad usage; 2 bad trace; 4 other error (e.g. FILE not writable)\n";

static int usage_error(const char *help, const char *fmt, const char *arg)
{
    fprintf(stderr, "fragless: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", help);
    return CLI_EXIT_USAGE;
}

/* "1.05x" is relative to peak live; anything else is a size. */
static int parse_capacity(const char *text, cli_opts *o)
{
    size_t n = strlen(text);
    if (n > 1 && (text[n - 1] == 'x' || text[n - 1] == 'X')) {
        char *end;
        errno = 0;
        double v = strtod(text, &end);
        if (errno || end != text + n - 1 || !(v > 0) || v > 1e6) {
            fprintf(stderr, "fragless: --capacity '%s': expected a factor like 1.05x\n", text);
            return CLI_EXIT_USAGE;
        }
        o->capacity_factor = v;
        return 0;
    }
    if (fl_parse_size(text, &o->capacity) != FL_OK) {
        fprintf(stderr, "fragless: --capacity: %s\n", fl_last_error());
        return CLI_EXIT_USAGE;
    }
    if (o->capacity == 0) {
        fprintf(stderr, "fragless: --capacity '%s': must be more than 0\n", text);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int cli_parse_device(const char *v, int *device)
{
    char *end;
    errno = 0;
    long d = strtol(v, &end, 10);
    if (errno || end == v || *end || d < 0 || d > 1023)
        return CLI_EXIT_USAGE;
    *device = (int)d;
    return 0;
}

int cli_parse_opts(int argc, char **argv, cli_mode mode, cli_opts *o)
{
    const char *help = cli_help(cli_mode_name(mode));
    int is_compare = mode == CLI_COMPARE, is_doctor = mode == CLI_DOCTOR, is_report = mode == CLI_REPORT;
    int multi = is_compare || is_report; /* several traces, --policies */
    memset(o, 0, sizeof *o);
    fl_config_default(&o->opts.cfg);
    fl_sim_params_default(&o->opts.sim);
    o->min_capacity = multi;
    o->format = "text";
    o->device = FL_DEVICE_DEFAULT;
    o->policies = multi ? "fragless,cca,cca-expandable,nocache" : is_doctor ? "cca" : "fragless";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return CLI_HELP_SHOWN;
        } else if (!strcmp(a, "--policy") || !strcmp(a, "--policies")) {
            /* One option under two spellings (compare had --policies): a list where the
             * command compares, one name where it runs one policy. */
            if (v)
                o->policies = v;
            /* Doctor's "what you ran" over a snapshot's own settings; report's list is
             * what to compare, its doctor section keeps to the snapshot's. */
            o->policy_given |= !multi;
        } else if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && is_report) {
            o->output = v;
        } else if (!strcmp(a, "--capacity")) {
            if (v && parse_capacity(v, o))
                return CLI_EXIT_USAGE;
        } else if (!strcmp(a, "--device")) {
            if (v && cli_parse_device(v, &o->device))
                return usage_error(help, "--device '%s': expected a device number from 0 to 1023", v);
        } else if (!strcmp(a, "--granularity")) {
            if (v && (fl_parse_size(v, &o->opts.sim.granularity) != FL_OK))
                return usage_error(help, "--granularity: %s", fl_last_error());
            /* Sizes are divided by it and rounded to it: a power of two the sim device
             * takes (>= 4 KiB), and at most 1 GiB (GPUs map 2 MiB pages). */
            uint64_t g = o->opts.sim.granularity;
            if (v && (!fli_is_pow2(g) || g < 4096 || g > FL_GiB))
                return usage_error(help, "--granularity '%s': expected a power of two from 4KiB to 1GiB", v);
        } else if (!strcmp(a, "--conf")) {
            o->policy_given = 1;
            if (v && fl_config_parse(&o->opts.cfg, v) != FL_OK)
                return usage_error(help, "--conf: %s", fl_last_error());
        } else if (!strcmp(a, "--format")) {
            if (is_report)
                return usage_error(help, "report has no --format: it writes one HTML page (-o FILE.html); "
                                         "compare, replay and doctor print text, csv or json%s", "");
            /* "table" was compare's and replay's word for what doctor called "text". */
            if (v && !strcmp(v, "table"))
                v = "text";
            if (v && is_doctor && !strcmp(v, "csv"))
                return usage_error(help, "--format csv: doctor prints text or json (a diagnosis has no CSV "
                                         "form; `fragless compare --format csv` has the figures)%s", "");
            if (v && strcmp(v, "text") && strcmp(v, "csv") && strcmp(v, "json"))
                return usage_error(help, is_doctor ? "--format '%s': expected text or json"
                                                   : "--format '%s': expected text, csv or json", v);
            if (v)
                o->format = v;
        } else if (!strcmp(a, "--timeline") && mode == CLI_REPLAY) {
            char *end;
            long n = v ? strtol(v, &end, 10) : 0;
            if (v && (*end || n < 1 || n > 10000))
                return usage_error(help, "--timeline '%s': expected a number of windows from 1 to 10000", v);
            o->timeline = (int)n;
        } else if (!strcmp(a, "--min-capacity") && mode == CLI_REPLAY) {
            o->min_capacity = 1;
            takes = 0;
        } else if (!strcmp(a, "--no-min-capacity") && is_compare) {
            o->min_capacity = 0;
            takes = 0;
        } else if (a[0] == '-' && a[1]) {
            return usage_error(help, "unknown option '%s'", a);
        } else {
            if (o->n_traces == CLI_MAX_TRACES)
                return usage_error(help, "too many traces (at most %s)", "256");
            o->traces[o->n_traces++] = a;
            takes = 0;
        }
        if (takes) {
            if (!v)
                return usage_error(help, "option '%s' needs a value", a);
            i++;
        }
    }
    if (o->n_traces == 0)
        return usage_error(help, "no trace given%s", "");
    if (is_report && (!o->output || !*o->output))
        return usage_error(help, "no output file given (-o REPORT.html)%s", "");
    if (!multi && strchr(o->policies, ','))
        return usage_error(help, "--policy '%s': this command runs one policy; compare takes a list", o->policies);
    /* doctor also takes the rank files of one job (cli_job_expand checks that they are). */
    if (!multi && !is_doctor && o->n_traces > 1)
        return usage_error(help, "this command takes one trace; use compare for several (got '%s' too)",
                           o->traces[1]);
    return 0;
}

/* In cli_mode's order. */
static const char *const mode_names[] = {"replay", "compare", "doctor", "report"};

const char *cli_mode_name(cli_mode mode)
{
    return mode_names[mode];
}

int cli_mode_of(const char *command, cli_mode *mode)
{
    for (int i = 0; i < (int)(sizeof mode_names / sizeof mode_names[0]); i++)
        if (!strcmp(command, mode_names[i])) {
            *mode = (cli_mode)i;
            return 0;
        }
    return -1;
}

const char *cli_help(const char *command)
{
    return !strcmp(command, "replay")    ? replay_help
           : !strcmp(command, "compare") ? compare_help
           : !strcmp(command, "doctor")  ? doctor_help
           : !strcmp(command, "report")  ? report_help
                                         : main_help;
}
