/* `fragless run`: starts any command with fragless serving its CUDA allocations —
 * FRAGLESS_CONF from the options, libfragless_preload.so (beside the fragless executable)
 * put first in LD_PRELOAD, PyTorch's allocator switched to its cudaMallocAsync backend so
 * that every tensor (not only PyTorch's segments) reaches fragless — by replacing this
 * process with the command. */
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
    "Runs COMMAND with fragless serving its cudaMalloc (and cudaMallocPitch, cudaMalloc3D),\n"
    "cudaFree, cudaMallocAsync, cudaFreeAsync, cudaMemGetInfo and CUDA IPC (LD_PRELOAD of\n"
    "libfragless_preload.so): any program that uses the CUDA runtime as a shared library\n"
    "(libcudart.so; nvcc links the static one unless given -cudart shared: a process that\n"
    "used the GPU with no call served is told so at exit). One allocator per GPU and process.\n"
    "\n"
    "PyTorch: its caching allocator would cudaMalloc whole segments and cut them up itself,\n"
    "so PYTORCH_CUDA_ALLOC_CONF gets backend:cudaMallocAsync (added to what you set there or\n"
    "in PYTORCH_ALLOC_CONF): every tensor is then one cudaMallocAsync served by fragless. A\n"
    "backend you chose yourself is kept (backend:native: fragless serves segments only).\n"
    "\n"
    "  --conf CONF    FRAGLESS_CONF for the command, e.g. policy:fragless,limit:70GiB;\n"
    "                 without it, FRAGLESS_CONF from the environment (if any) is kept\n"
    "  --trace PATH   record every allocation and free as an RMM CSV trace (adds\n"
    "                 trace:PATH to FRAGLESS_CONF), for `fragless compare` and `replay`.\n"
    "                 Each process writes its own file: PATH with .%p (its pid) before the\n"
    "                 extension unless PATH holds %p; %r is the rank ($RANK or $LOCAL_RANK),\n"
    "                 e.g. --trace run.rank%r.csv; GPU N > 0 adds .devN\n"
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
 * allocation) in which every process has a name of its own: %p (the pid) before the
 * extension unless PATH has it (a launcher's workers, DataLoader processes and ranks all
 * run under one `fragless run`). A ',' would end the FRAGLESS_CONF entry. */
static int trace_path(const char *path, char *out, size_t n)
{
    if (strchr(path, ',')) {
        fprintf(stderr, "fragless run: --trace '%s': a path with a ',' cannot go into FRAGLESS_CONF\n", path);
        return -1;
    }
    char probe[FL_PATH_MAX];
    if (fli_expand_path(path, probe, sizeof probe) != FL_OK) {
        fprintf(stderr, "fragless run: --trace: %s\n", fl_last_error());
        return -1;
    }
    char cwd[PATH_MAX];
    if (path[0] != '/' && !getcwd(cwd, sizeof cwd)) {
        fprintf(stderr, "fragless run: --trace '%s': cannot read the current directory: %s\n", path,
                strerror(errno));
        return -1;
    }
    const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
    if (!dot || (slash && dot < slash) || dot == (slash ? slash + 1 : path))
        dot = path + strlen(path);
    int has_pid = 0;
    for (const char *p = path; *p; p++)
        if (*p == '%' && p[1])
            has_pid |= *++p == 'p'; /* "%%" skips its second '%' too */
    if (snprintf(out, n, "%s%s%.*s%s%s", path[0] == '/' ? "" : cwd, path[0] == '/' ? "" : "/",
                 (int)(dot - path), path, has_pid ? "" : ".%p", dot) >= (int)n) {
        fprintf(stderr, "fragless run: --trace '%s': the path is too long\n", path);
        return -1;
    }
    return 0;
}

/* The value of key in a PyTorch allocator config ("k:v,k:v"), copied into out; 0 if the
 * key is absent. */
static int torch_conf_value(const char *conf, const char *key, char *out, size_t n)
{
    size_t klen = strlen(key);
    for (const char *p = conf; p && *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        if (!strncmp(p, key, klen)) {
            const char *v = p + klen;
            while (*v == ' ')
                v++;
            if (*v == ':') {
                for (v++; *v == ' '; v++)
                    ;
                size_t len = (size_t)(end - v);
                while (len && v[len - 1] == ' ')
                    len--;
                snprintf(out, n, "%.*s", (int)len, v);
                return 1;
            }
        }
        p = end;
    }
    return 0;
}

/* PyTorch's allocator config: backend:cudaMallocAsync added to each of the two variables
 * the user set (PyTorch reads one or the other depending on its version), or
 * PYTORCH_CUDA_ALLOC_CONF alone when neither is set. A backend the user chose stays. */
static int set_torch_conf(int verbose)
{
    static const char *const vars[] = {"PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"};
    int any = 0;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *old = getenv(vars[i]);
        if (!old)
            continue;
        any = 1;
        char backend[64];
        if (torch_conf_value(old, "backend", backend, sizeof backend)) {
            if (strcmp(backend, "cudaMallocAsync") != 0)
                fprintf(stderr, "fragless run: %s sets backend:%s, kept: PyTorch will cudaMalloc whole segments "
                        "and cut them up itself, and fragless sees only the segments (remove it, or set "
                        "backend:cudaMallocAsync, for fragless to serve every tensor)\n", vars[i], backend);
            continue;
        }
        size_t len = strlen(old);
        while (len && (old[len - 1] == ' ' || old[len - 1] == ','))
            len--;
        char *merged = malloc(len + 40);
        if (!merged) {
            fprintf(stderr, "fragless run: out of host memory\n");
            return -1;
        }
        snprintf(merged, len + 40, "%.*s%sbackend:cudaMallocAsync", (int)len, old, len ? "," : "");
        int r = setenv(vars[i], merged, 1);
        if (verbose)
            fprintf(stderr, "fragless run: %s=%s\n", vars[i], merged);
        free(merged);
        if (r)
            return -1;
    }
    if (!any) {
        if (setenv(vars[0], "backend:cudaMallocAsync", 1))
            return -1;
        if (verbose)
            fprintf(stderr, "fragless run: %s=backend:cudaMallocAsync\n", vars[0]);
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
    int verbose = v && !strcmp(v, "1");
    if (verbose)
        fprintf(stderr, "fragless run: LD_PRELOAD=%s FRAGLESS_CONF=%s %s\n", ld, full_conf, cmd[0]);
    free(ld);
    if (set_torch_conf(verbose)) {
        fprintf(stderr, "fragless run: cannot set PyTorch's allocator config: %s\n", strerror(errno));
        return CLI_EXIT_ERROR;
    }
    fflush(NULL);
    execvp(cmd[0], cmd);
    fprintf(stderr, "fragless run: cannot run '%s': %s\n", cmd[0], strerror(errno));
    return RUN_EXIT_EXEC;
}
