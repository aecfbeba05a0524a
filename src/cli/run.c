/* `fragless run`: starts any command with fragless serving its CUDA allocations —
 * FRAGLESS_CONF from the options, libfragless_preload.so (beside the fragless executable)
 * put first in LD_PRELOAD — by replacing this process with the command. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"

#define RUN_EXIT_EXEC 127 /* the command could not be started, as a shell says it */
#define PRELOAD_NAME "libfragless_preload.so"

static const char run_help[] =
    "usage: fragless run [--conf CONF] [--trace PATH] -- COMMAND [ARGS...]\n"
    "\n"
    "Runs COMMAND with fragless serving its cudaMalloc, cudaFree, cudaMallocAsync,\n"
    "cudaFreeAsync and cudaMemGetInfo (LD_PRELOAD of libfragless_preload.so): any program\n"
    "that uses the CUDA runtime as a shared library (libcudart.so; nvcc links the static\n"
    "one unless given -cudart shared). One allocator per GPU.\n"
    "\n"
    "  --conf CONF    FRAGLESS_CONF for the command, e.g. policy:fragless,limit:70GiB;\n"
    "                 without it, FRAGLESS_CONF from the environment (if any) is kept\n"
    "  --trace PATH   record every allocation and free as an RMM CSV trace (adds\n"
    "                 trace:PATH to FRAGLESS_CONF), for `fragless compare` and `replay`;\n"
    "                 one process on one GPU per file (each allocator writes it anew)\n"
    "\n"
    "environment:\n"
    "  FRAGLESS_PRELOAD   the preload library to use (default: " PRELOAD_NAME "\n"
    "                     in the directory of the fragless executable)\n"
    "  FRAGLESS_VERBOSE=1 say what is set up, and every failed allocation\n"
    "\n"
    "exit codes: COMMAND's own; 1 bad usage or no preload library; 127 COMMAND could\n"
    "            not be started\n";

static int run_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "fragless run: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", run_help);
    return CLI_EXIT_USAGE;
}

/* The preload library's absolute path: $FRAGLESS_PRELOAD, else beside this executable
 * (a build tree), else in the installed library folder (FL_RUN_LIBDIR: PREFIX/bin's
 * ../lib). Absolute because the command may change directory before starting its own
 * children. */
static int find_preload(char *out)
{
    const char *env = getenv("FRAGLESS_PRELOAD");
    char guess[PATH_MAX];
    if (env && env[0]) {
        snprintf(guess, sizeof guess, "%s", env);
    } else {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) {
            fprintf(stderr, "fragless run: cannot find the fragless executable (/proc/self/exe: %s); "
                    "set FRAGLESS_PRELOAD to the path of " PRELOAD_NAME "\n", strerror(errno));
            return -1;
        }
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        if (snprintf(guess, sizeof guess, "%s/" PRELOAD_NAME, exe) >= (int)sizeof guess) {
            fprintf(stderr, "fragless run: the path of " PRELOAD_NAME " beside %s is too long\n", exe);
            return -1;
        }
#ifdef FL_RUN_LIBDIR
        char installed[PATH_MAX];
        if (access(guess, F_OK) != 0 &&
            snprintf(installed, sizeof installed, "%s/../" FL_RUN_LIBDIR "/" PRELOAD_NAME, exe) < (int)sizeof installed &&
            access(installed, F_OK) == 0)
            snprintf(guess, sizeof guess, "%s", installed);
#endif
    }
    struct stat st;
    const char *why = NULL;
    if (!realpath(guess, out) || stat(out, &st) != 0)
        why = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        why = "not a file";
    if (why) {
        fprintf(stderr, "fragless run: the preload library %s is missing (%s); build the target "
                "fragless_preload, or set FRAGLESS_PRELOAD to its path\n", guess, why);
        return -1;
    }
    /* LD_PRELOAD separates entries with ':' and spaces. */
    if (strpbrk(out, ": \t")) {
        fprintf(stderr, "fragless run: the preload library's path '%s' has a ':' or a space, which "
                "LD_PRELOAD cannot hold; move it or set FRAGLESS_PRELOAD\n", out);
        return -1;
    }
    return 0;
}

/* --trace PATH as an absolute path (the command may change directory before its first
 * allocation); a ',' would end the FRAGLESS_CONF entry. */
static int trace_path(const char *path, char *out, size_t n)
{
    if (strchr(path, ',')) {
        fprintf(stderr, "fragless run: --trace '%s': a path with a ',' cannot go into FRAGLESS_CONF\n", path);
        return -1;
    }
    char cwd[PATH_MAX];
    if (path[0] != '/' && !getcwd(cwd, sizeof cwd)) {
        fprintf(stderr, "fragless run: --trace '%s': cannot read the current directory: %s\n", path,
                strerror(errno));
        return -1;
    }
    if (snprintf(out, n, "%s%s%s", path[0] == '/' ? "" : cwd, path[0] == '/' ? "" : "/", path) >= (int)n) {
        fprintf(stderr, "fragless run: --trace '%s': the path is too long\n", path);
        return -1;
    }
    return 0;
}

int cli_run_parse(int argc, char **argv, cli_run_opts *o)
{
    const char *conf = NULL, *trace = NULL;
    o->cmd = NULL;
    o->conf[0] = 0;
    int i = 0;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(run_help, stdout);
            return CLI_HELP_SHOWN;
        }
        if (!strcmp(a, "--conf") || !strcmp(a, "--trace")) {
            if (i + 1 >= argc)
                return run_usage("option '%s' needs a value", a);
            *(!strcmp(a, "--conf") ? &conf : &trace) = argv[++i];
        } else if (a[0] == '-') {
            return run_usage("unknown option '%s' (the command goes after '--')", a);
        } else {
            break; /* the command, without '--' before it */
        }
    }
    if (i >= argc)
        return run_usage("no command given%s", "");

    /* FRAGLESS_CONF: --conf, else the inherited one; then trace:PATH. */
    if (!conf)
        conf = getenv("FRAGLESS_CONF");
    char trace_abs[PATH_MAX];
    if (trace && trace_path(trace, trace_abs, sizeof trace_abs))
        return CLI_EXIT_USAGE;
    size_t clen = conf ? strlen(conf) : 0;
    int comma = trace && clen && conf[clen - 1] != ','; /* PyTorch's syntax allows one at the end */
    int n = snprintf(o->conf, sizeof o->conf, "%s%s%s%s", conf ? conf : "", comma ? "," : "",
                     trace ? "trace:" : "", trace ? trace_abs : "");
    if (n < 0 || n >= (int)sizeof o->conf)
        return run_usage("--conf is too long (%s)", "4095 bytes at most");
    /* Checked here so that a typo stops before the command runs, not at its first
     * cudaMalloc deep inside it. */
    fl_config cfg;
    fl_config_default(&cfg);
    if (fl_config_parse(&cfg, o->conf) != FL_OK)
        return run_usage("%s", fl_last_error());
    o->cmd = argv + i;
    return 0;
}

int cli_run(int argc, char **argv)
{
    cli_run_opts o;
    int rc = cli_run_parse(argc, argv, &o);
    if (rc)
        return rc == CLI_HELP_SHOWN ? CLI_EXIT_OK : rc;
    char **cmd = o.cmd;
    const char *full_conf = o.conf;

    char preload[PATH_MAX];
    if (find_preload(preload))
        return CLI_EXIT_USAGE;
    const char *old = getenv("LD_PRELOAD");
    size_t len = strlen(preload) + (old ? strlen(old) + 1 : 0) + 1;
    char *ld = malloc(len);
    if (!ld) {
        fprintf(stderr, "fragless run: out of host memory\n");
        return CLI_EXIT_ERROR;
    }
    /* First, so that our cudaMalloc is found before any other preloaded one. */
    snprintf(ld, len, "%s%s%s", preload, old && old[0] ? ":" : "", old ? old : "");
    if (setenv("LD_PRELOAD", ld, 1) || setenv("FRAGLESS_CONF", full_conf, 1)) {
        fprintf(stderr, "fragless run: cannot set the environment: %s\n", strerror(errno));
        free(ld);
        return CLI_EXIT_ERROR;
    }
    const char *v = getenv("FRAGLESS_VERBOSE");
    if (v && !strcmp(v, "1"))
        fprintf(stderr, "fragless run: LD_PRELOAD=%s FRAGLESS_CONF=%s %s\n", ld, full_conf, cmd[0]);
    free(ld);
    fflush(NULL);
    execvp(cmd[0], cmd);
    fprintf(stderr, "fragless run: cannot run '%s': %s\n", cmd[0], strerror(errno));
    return RUN_EXIT_EXEC;
}
