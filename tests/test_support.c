/* Shared by every test executable: the counters and summary of test_support.h, and the
 * helpers several tests use. */
#include "test_support.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int fl_test_failures;
int fl_test_checks;

int fl_test_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, fl_test_checks, fl_test_failures);
    return fl_test_failures ? 1 : 0;
}

void fl_test_check_mentions(const char *what, const char *file, int line)
{
    fl_test_checks++;
    if (strstr(fl_last_error(), what) == NULL) {
        fl_test_failures++;
        fprintf(stderr, "%s:%d: message \"%s\" does not mention \"%s\"\n", file, line, fl_last_error(), what);
    }
}

void fl_test_skip(const char *why)
{
    printf("SKIPPED: %s\n", why);
    exit(77);
}

double fl_test_issue13_bar(uint64_t peak_live, uint64_t gran, uint64_t *page_limit)
{
    uint64_t limit = (peak_live + gran - 1) / gran * gran;
    if (page_limit)
        *page_limit = limit;
    double by_share = 1.01 * (double)peak_live, by_pages = (double)(limit + (UINT64_C(4) << 20));
    return by_share > by_pages ? by_share : by_pages;
}

const char *fl_test_shared_traces(void)
{
    static const char dir[] = FL_SHARED_DIR "/traces";
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        printf("note: %s is absent (not a CI checkout with ../shared): shared-trace tests skipped\n", dir);
        return NULL;
    }
    return dir;
}

/* ---- child commands ---- */

size_t fl_test_slurp(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    size_t k = f ? fread(buf, 1, n - 1, f) : 0;
    buf[k] = 0;
    if (f)
        fclose(f);
    return k;
}

char *fl_test_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc(n > 0 ? (size_t)n + 1 : 1);
    size_t got = s && n > 0 ? fread(s, 1, (size_t)n, f) : 0;
    if (s)
        s[got] = '\0';
    fclose(f);
    return s;
}

/* A fresh empty temp file's name in path; 0 (said on stderr) if none could be made. */
static int temp_file(char *path, size_t n, const char *what)
{
    snprintf(path, n, "/tmp/fl_test_%s.XXXXXX", what);
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        return 0;
    }
    close(fd);
    return 1;
}

fl_run_result *fl_test_shell(const char *cmdline)
{
    static fl_run_result r;
    char out[64], err[64];
    r.code = -1;
    r.out[0] = r.err[0] = 0;
    if (!temp_file(out, sizeof out, "out"))
        return &r;
    if (!temp_file(err, sizeof err, "err")) {
        unlink(out);
        return &r;
    }
    size_t n = strlen(cmdline) + 2 * sizeof out + 32;
    char *cmd = malloc(n);
    if (!cmd) {
        fprintf(stderr, "no memory for the command line\n");
        exit(1);
    }
    /* A group, so that every command of the line writes to the files. */
    snprintf(cmd, n, "{\n%s\n} >'%s' 2>'%s'", cmdline, out, err);
    fflush(NULL);
    int st = system(cmd);
    free(cmd);
    r.code = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    fl_test_slurp(out, r.out, sizeof r.out);
    fl_test_slurp(err, r.err, sizeof r.err);
    unlink(out);
    unlink(err);
    return &r;
}

/* ---- devices and allocators ---- */

fl_device *fl_test_sim(uint64_t capacity, uint64_t granularity)
{
    fl_sim_params p;
    fl_sim_params_default(&p);
    if (capacity)
        p.capacity = capacity;
    if (granularity)
        p.granularity = granularity;
    fl_device *d = NULL;
    if (fl_sim_device_create(&p, &d) != FL_OK) {
        fprintf(stderr, "cannot create a sim device: %s\n", fl_last_error());
        exit(1);
    }
    return d;
}

fl_allocator *fl_test_allocator(const char *conf, fl_device *d)
{
    fl_config cfg;
    fl_config_default(&cfg);
    if (conf && !strchr(conf, ':')) {
        snprintf(cfg.policy, sizeof cfg.policy, "%s", conf);
    } else if (conf && fl_config_parse(&cfg, conf) != FL_OK) {
        fprintf(stderr, "conf %s: %s\n", conf, fl_last_error());
        exit(1);
    }
    fl_allocator *a = NULL;
    if (fl_allocator_create(&cfg, d, &a) != FL_OK) {
        fprintf(stderr, "cannot create an allocator (%s): %s\n", conf ? conf : "defaults", fl_last_error());
        exit(1);
    }
    return a;
}

const char *fl_test_hex(uint64_t x)
{
    static char buf[4][32];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "0x%llx", (unsigned long long)x);
    return buf[k];
}

/* ---- the CUDA driver double ---- */

fl_device *fl_test_fake_device(void)
{
    fl_cuda_params p;
    fl_cuda_params_default(&p);
    p.library = FL_TEST_FAKECUDA;
    fl_device *d = NULL;
    CHECK_OK(fl_cuda_device_create(&p, &d));
    return d;
}

void *fl_test_fakecuda(void)
{
    static const char path[] = FL_TEST_FAKECUDA;
    if (!path[0])
        return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
    return lib;
}

int fl_test_sym(void *lib, const char *name, void *slot)
{
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "%s has no symbol %s\n", FL_TEST_FAKECUDA[0] ? FL_TEST_FAKECUDA : "the library", name);
        return 0;
    }
    memcpy(slot, &p, sizeof p); /* object to function pointer, as POSIX allows it */
    return 1;
}

fl_run_result *fl_test_run(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return fl_test_shell(cmd);
}

void fl_test_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(data, 1, n, f) == n);
    if (f)
        fclose(f);
}
