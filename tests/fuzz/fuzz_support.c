/* The fuzz targets' private temporary folder and the catching of what CLI commands print
 * (fuzz.h). Commands print usage texts and reports: printed, a 10-minute run would write
 * gigabytes to the log; caught, the targets can check what was printed. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

/* Where ASan and UBSan write their reports; weak: absent without a sanitizer. */
extern void __sanitizer_set_report_fd(void *fd) __attribute__((weak));

static char tmpdir[3072]; /* $TMPDIR (3000 bytes at most) and the folder's name */
static int sinks[2] = {-1, -1}, saved[2] = {-1, -1}, muted;

/* Removes what dir holds, one level of folders deep (the targets make no deeper ones),
 * never following a link: a link is removed, not what it names. */
static void clear_dir(const char *dir, int depth)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth > 0)
                clear_dir(path, depth - 1);
            rmdir(path);
        } else {
            unlink(path);
        }
    }
    closedir(d);
}

static void remove_tmpdir(void)
{
    if (!tmpdir[0])
        return;
    for (int i = 0; i < 2; i++)
        if (sinks[i] >= 0)
            close(sinks[i]);
    clear_dir(tmpdir, 1);
    rmdir(tmpdir);
}

/* Folders of this user's fuzz processes that are gone: a crash (abort) or a kill (a
 * CTest timeout) skips the atexit handler. Named fragless-fuzz.PID.XXXXXX: only a folder
 * of that name, owned by this user, whose PID no longer exists, is removed. */
static void remove_stale(const char *base)
{
    DIR *d = opendir(base);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        int pid, end = 0;
        if (sscanf(e->d_name, "fragless-fuzz.%d.%*6[A-Za-z0-9]%n", &pid, &end) != 1 || e->d_name[end] != 0 ||
            end == 0 || pid <= 0 || pid == (int)getpid() || kill(pid, 0) == 0 || errno != ESRCH)
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", base, e->d_name);
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
            continue;
        clear_dir(path, 1);
        rmdir(path);
    }
    closedir(d);
}

const char *fz_tmpdir(void)
{
    if (tmpdir[0])
        return tmpdir;
    const char *base = getenv("TMPDIR");
    if (!base || !base[0] || strlen(base) > 3000)
        base = "/tmp";
    remove_stale(base);
    snprintf(tmpdir, sizeof tmpdir, "%s/fragless-fuzz.%d.XXXXXX", base, (int)getpid());
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "fuzz: cannot make a temporary folder %s: %s\n", tmpdir, strerror(errno));
        abort();
    }
    atexit(remove_tmpdir);
    return tmpdir;
}

const char *fz_path(char *buf, const char *name)
{
    int n = snprintf(buf, 4096, "%s/%s", fz_tmpdir(), name);
    FZ_CHECK(n > 0 && n < 4096, "path too long: %s", name);
    return buf;
}

const char *fz_write_file(char *buf, const char *name, const void *data, size_t n)
{
    fz_path(buf, name);
    unlink(buf);
    int fd = open(buf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    FZ_CHECK(fd >= 0, "cannot create %s: %s", buf, strerror(errno));
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, (const char *)data + done, n - done);
        FZ_CHECK(w > 0, "cannot write %s: %s", buf, strerror(errno));
        done += (size_t)w;
    }
    close(fd);
    return buf;
}

static char *read_fd(int fd, size_t *len)
{
    struct stat st;
    FZ_CHECK(fstat(fd, &st) == 0, "fstat: %s", strerror(errno));
    size_t n = (size_t)st.st_size;
    char *text = malloc(n + 1);
    FZ_CHECK(text != NULL, "no memory for %zu bytes", n);
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, text + got, n - got, (off_t)got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    text[got] = 0;
    if (len)
        *len = got;
    return text;
}

char *fz_read_file(const char *name, size_t *len)
{
    char path[4096];
    int fd = open(fz_path(path, name), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *text = read_fd(fd, len);
    close(fd);
    return text;
}

void fz_clear_tmpdir(void)
{
    clear_dir(fz_tmpdir(), 1);
    /* The sinks stay open and are recreated empty by fz_mute. */
    for (int i = 0; i < 2; i++)
        if (sinks[i] >= 0) {
            close(sinks[i]);
            sinks[i] = -1;
        }
}

void fz_mute(void)
{
    if (muted)
        return;
    fflush(stdout);
    fflush(stderr);
    if (saved[0] < 0) {
        saved[0] = fcntl(1, F_DUPFD_CLOEXEC, 3);
        saved[1] = fcntl(2, F_DUPFD_CLOEXEC, 3);
        FZ_CHECK(saved[0] >= 0 && saved[1] >= 0, "cannot keep stdout and stderr: %s", strerror(errno));
        if (__sanitizer_set_report_fd)
            __sanitizer_set_report_fd((void *)(intptr_t)saved[1]);
    }
    static const char *const names[2] = {".stdout", ".stderr"};
    for (int i = 0; i < 2; i++) {
        if (sinks[i] < 0) {
            char path[4096];
            fz_path(path, names[i]);
            /* O_APPEND: after the truncation in fz_unmute, writes start at 0 again. */
            sinks[i] = open(path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
            FZ_CHECK(sinks[i] >= 0, "cannot create %s: %s", path, strerror(errno));
        }
        FZ_CHECK(dup2(sinks[i], i + 1) == i + 1, "dup2: %s", strerror(errno));
    }
    muted = 1;
}

void fz_unmute(char **out, size_t *out_len, char **err, size_t *err_len)
{
    if (out)
        *out = NULL;
    if (err)
        *err = NULL;
    if (!muted)
        return;
    fflush(stdout);
    fflush(stderr);
    muted = 0;
    dup2(saved[0], 1);
    dup2(saved[1], 2);
    if (out)
        *out = read_fd(sinks[0], out_len);
    if (err)
        *err = read_fd(sinks[1], err_len);
    for (int i = 0; i < 2; i++)
        if (ftruncate(sinks[i], 0) != 0)
            FZ_CHECK(0, "cannot empty the output file: %s", strerror(errno));
}

void fz_on_failure(void)
{
    fz_unmute(NULL, NULL, NULL, NULL);
}

/* ---- `fragless report`'s pages ---- */

/* The tags `fragless report` writes; anything else came from an input unescaped. */
static const char *const report_tags[] = {
    "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "nav", "a",
    "main", "section", "div", "span", "b", "i", "table", "thead", "tbody", "tr", "th", "td", "svg", "line",
    "text", "polygon", "polyline", "rect", "code", "figure", "figcaption", NULL};

/* Attributes whose values are numbers (or lists of them). */
static const char *const numeric_attrs[] = {"x", "y", "x1", "x2", "y1", "y2", "width", "height", "points",
                                            "viewBox", "data-v", "data-units", "data-unmapped", "data-cached",
                                            "data-pin1", "data-pinn", "data-reserved", NULL};

static int in_list(const char *const *list, const char *s, size_t n)
{
    for (; *list; list++)
        if (strlen(*list) == n && !strncmp(*list, s, n))
            return 1;
    return 0;
}

void fz_check_report_html(const char *html, size_t len)
{
    static const char tail[] = "</main></body></html>\n";
    FZ_CHECK(len >= sizeof tail - 1 && !strcmp(html + len - (sizeof tail - 1), tail), "the report is cut short");
    FZ_CHECK(strlen(html) == len, "a NUL in the report");
    const char *style_end = strstr(html, "</style>");
    for (const char *p = html; (p = strchr(p, '<')) != NULL; p++) {
        if (p[1] == '/')
            continue;
        const char *q = p + 1;
        while (isalnum((unsigned char)*q) || *q == '!')
            q++;
        FZ_CHECK(in_list(report_tags, p + 1, (size_t)(q - p - 1)), "a tag the report does not write: '%.40s'", p);
        /* The tag's attributes, up to its '>' (values never hold '>': escaped). */
        const char *end = strchr(q, '>');
        FZ_CHECK(end != NULL, "a tag without its end: '%.40s'", p);
        for (const char *a = q; a < end;) {
            while (a < end && *a == ' ')
                a++;
            const char *eq = a;
            while (eq < end && *eq != '=' && *eq != ' ')
                eq++;
            if (eq >= end || *eq != '=' || eq[1] != '"') {
                a = eq + 1;
                continue;
            }
            const char *v = eq + 2, *ve = memchr(v, '"', (size_t)(end - v));
            FZ_CHECK(ve != NULL, "an attribute value without its end: '%.60s'", a);
            if (in_list(numeric_attrs, a, (size_t)(eq - a)))
                for (const char *c = v; c < ve; c++)
                    FZ_CHECK(isdigit((unsigned char)*c) || strchr("-., ", *c), "attribute %.*s is not a number: '%.*s'",
                             (int)(eq - a), a, (int)(ve - v), v);
            a = ve + 1;
        }
        if (style_end && p < style_end && !strncmp(p, "<style>", 7))
            p = style_end; /* CSS is not markup */
    }
}
