/* Shared by the CLI's files: parsed options and the commands. */
#ifndef FL_CLI_H
#define FL_CLI_H

#include "cli/progress.h"
#include "gen/gen.h"
#include "replay/doctor.h"
#include "replay/input.h"

enum { CLI_EXIT_OK = 0, CLI_EXIT_USAGE = 1, CLI_EXIT_INPUT = 2, CLI_EXIT_OOM = 3, CLI_EXIT_ERROR = 4 };
typedef enum cli_mode { CLI_REPLAY, CLI_COMPARE, CLI_DOCTOR, CLI_REPORT } cli_mode;
#define CLI_MAX_TRACES 256
#define CLI_MAX_POLICIES 16

typedef struct cli_job cli_job;

typedef struct cli_opts {
    fli_replay_opts opts;        /* config and device shared by every run */
    const char *traces[CLI_MAX_TRACES];
    int n_traces;
    const char *policies;       /* comma-separated */
    int policy_given;           /* --policy/--policies or --conf was on the command line */
    uint64_t capacity;          /* absolute, 0 = none */
    double capacity_factor;     /* times peak_live, 0 = none */
    int min_capacity;
    int timeline;
    const char *format;         /* table, csv, json */
    const char *output;         /* report: -o PATH */
    int device;                 /* --device N for snapshots, FL_DEVICE_DEFAULT if not given */
    cli_job *job;               /* the inputs are the rank files of one job (job.c), else NULL */
} cli_opts;

/* ---- a multi-GPU job (job.c): the rank files of one job, their figures side by side ---- */
struct cli_job {
    int is_job;
    int n;                                      /* ranks (= the command's traces, in rank order) */
    char name[512];                             /* the files' name with %r for the rank */
    int rank[CLI_MAX_TRACES];
    const char *metric;                         /* what `need` holds: min_capacity or peak_reserved */
    int np;
    char policy[CLI_MAX_POLICIES][32];
    uint64_t peak_live[CLI_MAX_TRACES];
    uint64_t need[CLI_MAX_TRACES][CLI_MAX_POLICIES];
    unsigned have[CLI_MAX_TRACES];              /* bit per policy */
};
/* The inputs made concrete: a folder's traces (sorted by name), a name with %r (the files
 * that have a number there), other words as they are. When they are the files of one job
 * (names that differ only in one number), they are put in rank order and o->job = job.
 * 0 or an exit code with the reason on stderr. */
int cli_job_expand(cli_opts *o, cli_mode mode, cli_job *job);
/* A rank's figure (t: its index in o->traces) under policy number `policy`. */
void cli_job_record(cli_job *job, int t, int policy, const char *name, uint64_t peak_live, uint64_t need);
void cli_job_print_text(const cli_job *job);
void cli_job_print_json(const cli_job *job);
void cli_job_write_html(FILE *f, const cli_job *job);

/* --device N: 0 or an exit code (with the message). */
int cli_parse_device(const char *v, int *device);

/* JSON on stdout: a string, escaped as JSON needs (names come from the command line and
 * from files); a number, or null when it has no finite value (a ratio over 0): the
 * output is always JSON. */
void cli_json_str(const char *s);
void cli_json_num(double v, int decimals);
/* "s" unless n is 1: "1 stream", "2 streams". */
static inline const char *cli_plural(unsigned long long n) { return n == 1 ? "" : "s"; }

/* ---- the command line as options (options.c and each command's file). Parsing runs
 * nothing and exits nothing: it returns 0 (o filled, its strings pointing into argv),
 * CLI_HELP_SHOWN (the help is on stdout: exit 0), or an exit code (CLI_EXIT_USAGE) with
 * the reason and the help on stderr. argv: the words after the command's name. ---- */
#define CLI_HELP_SHOWN (-1)
/* The help of a command: replay, compare, doctor, report; anything else the main one. */
const char *cli_help(const char *command);
/* replay, compare, doctor, report: 0 and its mode; -1 for any other word. */
int cli_mode_of(const char *command, cli_mode *mode);
const char *cli_mode_name(cli_mode mode);
int cli_parse_opts(int argc, char **argv, cli_mode mode, cli_opts *o);

typedef struct cli_import_opts {
    const char *in, *out;
    int device;
} cli_import_opts;
int cli_import_parse(int argc, char **argv, cli_import_opts *o);

typedef struct cli_fidelity_opts {
    int csv, json;              /* --format csv, json; else text */
    int n_snapshots;            /* the words that are not options are the snapshots */
    int device;                 /* --device N, else FL_DEVICE_ALL */
} cli_fidelity_opts;
int cli_fidelity_parse(int argc, char **argv, cli_fidelity_opts *o);

typedef struct cli_top_opts {
    int once;
    double interval;            /* seconds between frames */
    const char *dir;            /* NULL: fli_publish_dir() */
} cli_top_opts;
int cli_top_parse(int argc, char **argv, cli_top_opts *o);

typedef struct cli_gen_opts {
    fli_gen_params p;
    const char *output;         /* -o PATH, %r for the rank */
} cli_gen_opts;
int cli_gen_parse(int argc, char **argv, cli_gen_opts *o);

typedef struct cli_run_opts {
    char **cmd;                 /* the command and its arguments (NULL-terminated, in argv) */
    char conf[4096];            /* FRAGLESS_CONF for it: --conf (else the inherited one) and trace:PATH */
} cli_run_opts;
int cli_run_parse(int argc, char **argv, cli_run_opts *o);

/* ---- the commands: exit codes ---- */
int cli_compare(const cli_opts *o);
int cli_replay(const cli_opts *o);
int cli_import(int argc, char **argv);
int cli_fidelity(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_gen(int argc, char **argv);
int cli_top(int argc, char **argv);
/* One frame of `fragless top` for the records in dir, as text (malloc'd; without NVML's
 * lines), waiting at most wait_ns in all for records that stay mid-update; -1 with the
 * reason on stderr when dir cannot be read. */
int cli_top_frame(const char *dir, uint64_t wait_ns, char **text, size_t *len);

int cli_doctor(const cli_opts *o);

/* One section of the doctor (a trace, or one device of a snapshot), as `doctor` and
 * `report` run it: what ran (the snapshot's settings unless --policy or --conf), the
 * capacity (--capacity, else a snapshot's oom event), the fidelity of the emulation and
 * its caveat. known: min capacities already searched (report's comparison). */
typedef struct cli_section {
    const fli_snapshot_info *info;
    int from_snapshot;          /* ran is the snapshot's own allocator (followed) */
    int capacity_from_oom;
    int has_fidelity;
    fli_fidelity fidelity;
    char caveat[512];           /* "" when none */
    const fli_known_min *known;
    int n_known;
} cli_section;
int cli_doctor_section(const cli_opts *o, fli_loaded *in, fli_replay_opts *ran, cli_section *sec, fli_diagnosis *d,
                       cli_progress *bar);
/* The parts of a breakdown in order (key for JSON and data attributes, label for text). */
#define CLI_N_PARTS 6
typedef struct cli_part {
    const char *key, *label;
} cli_part;
extern const cli_part cli_parts[CLI_N_PARTS];
uint64_t cli_part_value(const fli_breakdown *b, int i);
/* A site's name, or what an unknown site means. */
const char *cli_site_name(const fli_prepared *p, uint32_t site);
/* A what-if row against what ran: "saves X", "costs X more" or "same". */
void cli_whatif_delta(char *buf, size_t n, uint64_t ran, uint64_t need);
/* `fragless report`: the HTML report of every trace (src/cli/report.c). */
int cli_report(const cli_opts *o);
/* --policies as names (at most CLI_MAX_POLICIES, each known); 0 or an exit code, with
 * the reason on stderr. */
int cli_split_policies(const char *list, char names[][32], int *n);
/* Shared by the commands: --capacity as bytes for one trace (a factor needs peak live);
 * 0, or an exit code with the reason on stderr (a factor whose bytes pass 2^64). */
int cli_capacity_for(const cli_opts *o, const fli_prepared *p, uint64_t *capacity);

#endif
